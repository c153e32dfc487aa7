/**
 * Download service SDK: the hand-written layer (`./sdk/`) and, for everything else, the client
 * generated from the OpenAPI document (`./generated/`): its functions and types.
 */
export * from './sdk/index.js';
export * from './generated/index.js';
