// Generates TypeScript declarations of the router and handler worlds from wit/world.wit into
// types/ (jco's type generator, given the WIT text: its file-path mode cannot read files on
// this setup). `npm run types`; CI checks the committed files are current.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { $init, generateTypes } from './node_modules/@bytecodealliance/jco-transpile/vendor/js-component-bindgen-component.js';

await $init;
const wit = await readFile(new URL('../../../wit/world.wit', import.meta.url), 'utf8');
for (const world of ['router-script', 'handler-script']) {
  const files = generateTypes(world, {
    wit: { tag: 'source', val: wit },
    world,
    guest: true,
    instantiation: undefined,
    tlaCompat: false,
    features: { tag: 'list', val: [] },
  });
  for (const [name, text] of files) {
    const path = join('types', world, name);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, text);
    console.log(path);
  }
}
