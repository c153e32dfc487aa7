// Checks that a generation holds everything the OpenAPI document describes, so that a part the
// generator dropped without a word fails ./generate instead of shipping:
//   - an SDK function per operationId, streaming (`.sse.`) where the operation answers
//     text/event-stream;
//   - a type per component schema, and no `unknown` among the types (a schema it could not type);
//   - for every response of an operation that has a body, its status in `<Op>Responses` or
//     `<Op>Errors`;
//   - a `Webhooks` type and the payload schema of every webhook.
//
// Usage: node scripts/check-generated.mjs SPEC.json GENERATED_DIR
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [specPath, generatedDir] = process.argv.slice(2);
if (!specPath || !generatedDir) {
  console.error('usage: check-generated.mjs SPEC.json GENERATED_DIR');
  process.exit(2);
}

const spec = JSON.parse(readFileSync(specPath, 'utf8'));
const sdkSource = readFileSync(join(generatedDir, 'sdk.gen.ts'), 'utf8');
const typesSource = readFileSync(join(generatedDir, 'types.gen.ts'), 'utf8');
const problems = [];

const pascalCase = (name) => name.charAt(0).toUpperCase() + name.slice(1);
const refName = (ref) => ref.split('/').pop();
const isExportedType = (name) => new RegExp(`^export type ${name}\\b`, 'm').test(typesSource);

/** The status codes listed in `export type <name> = { ... };` of types.gen.ts. */
function statusesOfType(name) {
  const start = typesSource.indexOf(`export type ${name} = {\n`);
  if (start < 0) return new Set();
  const end = typesSource.indexOf('\n};', start);
  const body = typesSource.slice(start, end);
  return new Set([...body.matchAll(/^ {4}(\d{3}|default): /gm)].map((match) => match[1]));
}

/** The text of `export const <operationId> = ...;` in sdk.gen.ts, or undefined. */
function sdkFunction(operationId) {
  const start = sdkSource.indexOf(`export const ${operationId} = `);
  if (start < 0) return undefined;
  const end = sdkSource.indexOf('\n\n', start);
  return sdkSource.slice(start, end < 0 ? undefined : end);
}

const methods = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
for (const [path, pathItem] of Object.entries(spec.paths ?? {})) {
  for (const method of methods) {
    const operation = pathItem[method];
    if (!operation) continue;
    const label = `${method.toUpperCase()} ${path}`;
    const operationId = operation.operationId;
    if (!operationId) {
      problems.push(`${label}: no operationId (the SDK function would get a made-up name)`);
      continue;
    }
    const fn = sdkFunction(operationId);
    if (!fn) {
      problems.push(`${label}: no SDK function ${operationId} in sdk.gen.ts`);
      continue;
    }
    const responses = Object.entries(operation.responses ?? {});
    const streams = responses.some(([, response]) => response?.content?.['text/event-stream']);
    if (streams && !fn.includes('.sse.')) {
      problems.push(`${label}: answers text/event-stream but ${operationId} is not a streaming (sse) function`);
    }
    const emitted = new Set([
      ...statusesOfType(`${pascalCase(operationId)}Responses`),
      ...statusesOfType(`${pascalCase(operationId)}Errors`),
    ]);
    for (const [status, response] of responses) {
      if (response?.content && Object.keys(response.content).length > 0 && !emitted.has(status)) {
        problems.push(`${label}: response ${status} has a body but is not in ${pascalCase(operationId)}Responses/Errors`);
      }
    }
  }
}

for (const name of Object.keys(spec.components?.schemas ?? {})) {
  if (!isExportedType(name)) problems.push(`schema ${name}: no exported type in types.gen.ts`);
}
const unknownLines = typesSource
  .split('\n')
  .map((line, index) => ({ line, number: index + 1 }))
  .filter(({ line }) => /\bunknown\b/.test(line) && !line.trimStart().startsWith('*'));
for (const { line, number } of unknownLines) {
  problems.push(`types.gen.ts:${number}: \`unknown\` (a schema the generator could not type): ${line.trim()}`);
}

const webhooks = Object.entries(spec.webhooks ?? {});
if (webhooks.length > 0 && !isExportedType('Webhooks')) problems.push('webhooks: no exported type Webhooks');
for (const [name, pathItem] of webhooks) {
  for (const method of methods) {
    const operation = pathItem[method];
    if (!operation) continue;
    for (const media of Object.values(operation.requestBody?.content ?? {})) {
      const ref = media.schema?.$ref;
      if (ref && !isExportedType(refName(ref))) {
        problems.push(`webhook ${name}: payload type ${refName(ref)} missing from types.gen.ts`);
      }
    }
  }
}

if (problems.length > 0) {
  console.error(`check-generated: the generation lacks parts of ${specPath}:`);
  for (const problem of problems) console.error(`  - ${problem}`);
  process.exit(1);
}
