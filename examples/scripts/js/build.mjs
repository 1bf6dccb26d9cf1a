// Builds router.js and handler.js into build/router.wasm and build/handler.wasm with
// componentize-js's API (its default features: the component imports wasi:http and stdio,
// which wasmgate links as deny-all stubs).
import { mkdir, writeFile } from 'node:fs/promises';
import { componentize } from '@bytecodealliance/componentize-js';

const witPath = new URL('../../../wit', import.meta.url).pathname;
await mkdir('build', { recursive: true });
for (const [source, worldName, out] of [
  ['router.js', 'router-script', 'build/router.wasm'],
  ['handler.js', 'handler-script', 'build/handler.wasm'],
]) {
  const { component } = await componentize({ sourcePath: source, witPath, worldName });
  await writeFile(out, component);
  console.log(`${out}: ${component.length} bytes`);
}
