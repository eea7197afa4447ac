// Which schemas the TypeScript SDK's validator (Ajv, as the SDK builds it) compiles, and
// which patterns JavaScript reads with the "u" flag (as Ajv builds each "pattern").
// argv: the SDK's folder, a JSON file {"schemas": [...], "patterns": [...]}; prints
// {"schemas": [true|false...], "patterns": [true|false...]}.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [sdkDir, file] = process.argv.slice(2);
const provider = `${sdkDir}/node_modules/@modelcontextprotocol/sdk/dist/esm/validation/ajv-provider.js`;
const { AjvJsonSchemaValidator } = await import(pathToFileURL(provider).href);
const { schemas, patterns } = JSON.parse(readFileSync(file, "utf8"));

const compiled = schemas.map((schema) => {
  try {
    new AjvJsonSchemaValidator().getValidator(schema);
    return true;
  } catch {
    return false;
  }
});
const read = patterns.map((pattern) => {
  try {
    new RegExp(pattern, "u");
    return true;
  } catch {
    return false;
  }
});
console.log(JSON.stringify({ schemas: compiled, patterns: read }));
