// Validates Compose files against the Compose Specification's JSON schema (the copy dclint
// bundles, pinned in package-lock.json), as Docker Compose v2 reads them: YAML merge keys
// (`<<: *anchor`) resolved first. Usage: node compose-schema.mjs FILE...
// Prints one line per problem and exits 1 if any file does not conform.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Ajv from 'ajv';
import { parse } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
const schema = JSON.parse(readFileSync(join(here, 'node_modules/dclint/schemas/compose.schema.json'), 'utf8'));
// Its $schema names draft-07 by an address Ajv does not know (https, no #): not re-validated.
const validate = new Ajv({ allErrors: true, strict: false, validateSchema: false }).compile(schema);

let failed = false;
for (const file of process.argv.slice(2)) {
  let document;
  try {
    document = parse(readFileSync(file, 'utf8'), { merge: true });
  } catch (err) {
    console.log(`${file}: not YAML: ${err.message}`);
    failed = true;
    continue;
  }
  if (validate(document)) {
    console.log(`${file}: conforms to the Compose Specification`);
    continue;
  }
  failed = true;
  for (const problem of validate.errors) {
    const at = problem.instancePath || '/';
    const detail = problem.params?.additionalProperty
      ? `${problem.message}: ${problem.params.additionalProperty}`
      : problem.params?.allowedValues
        ? `${problem.message}: ${problem.params.allowedValues.join(', ')}`
        : problem.message;
    console.log(`${file}: ${at}: ${detail}`);
  }
}
process.exit(failed ? 1 : 0);
