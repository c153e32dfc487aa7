// Configuration of @hey-api/openapi-ts, read by ./generate (which sets both variables below).
// The generated client lands in src/generated/ and is committed; never edit it by hand.
import { defineConfig } from '@hey-api/openapi-ts';

const input = process.env.OPENAPI_TS_INPUT;
const output = process.env.OPENAPI_TS_OUTPUT;
if (!input || !output) {
  throw new Error('run ./generate: it sets OPENAPI_TS_INPUT and OPENAPI_TS_OUTPUT');
}

export default defineConfig({
  input,
  output: {
    path: output,
    // Node's ES modules need the extension on relative imports (tsconfig: NodeNext).
    module: { extension: '.js' },
    // Look nowhere else for a tsconfig than this package.
    tsConfigPath: './tsconfig.json',
  },
  parser: {
    // Print the generator's own checks of the document; ./generate fails on any output it
    // does not expect, so a warning here stops the generation.
    validate_EXPERIMENTAL: 'warn',
  },
  // No crash log files in the work tree: a crash is printed, and fails ./generate.
  logs: { file: false },
  plugins: ['@hey-api/typescript', '@hey-api/sdk', '@hey-api/client-fetch'],
});
