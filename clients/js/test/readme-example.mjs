// Type-checks the TypeScript example of README.md against the SDK's sources, so the example
// keeps compiling as the API changes (npm test runs it).
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const example = readme.match(/```ts\n([\s\S]*?)```/)?.[1];
if (!example) throw new Error("no ```ts block in README.md");
const file = new URL("./.readme-example.ts", import.meta.url);
writeFileSync(file, `declare const myJwt: string;\n${example.replace('"@wasmgate/client"', '"../src/index.js"')}\nexport {};\n`);
try {
  execFileSync(
    "npx",
    ["tsc", "--noEmit", "--strict", "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler", "--lib", "es2022,dom", "--skipLibCheck", file.pathname],
    { stdio: "inherit" },
  );
} finally {
  rmSync(file);
}
console.log("README example type-checks");
