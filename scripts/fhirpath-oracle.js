// The FHIRPath oracle: evaluates every official R4 search-parameter expression on every official
// example with npm fhirpath@5.2.2 (the reference JavaScript implementation, with its R4 model),
// and prints one JSON line per (example, parameter): {file, type, param, values} or {…, error}.
// tests/fhirpath_oracle.rs compares the server's own evaluation with these lines.
//
//   NODE_PATH=<node_modules with fhirpath> node scripts/fhirpath-oracle.js EXAMPLES_DIR SEARCH_PARAMETERS_JSON
//
// Two adaptations, each printed with the line (`adapted`):
// - fhirpath.js resolves references only asynchronously, through a server. An extraction cannot
//   fetch, and neither does the server: `resolve() is T` is rewritten to a test of the literal
//   reference's type, which is what the server evaluates.
// - FHIRPath makes `x as T` an error when x has several items; R4's published expressions apply
//   it to repeating elements (`useContext.value as CodeableConcept`). On that error the line is
//   evaluated again with `as T` read as `.ofType(T)`, as the server (and R5's expressions) read it.
'use strict';
const fs = require('fs');
const path = require('path');
const fhirpath = require('fhirpath');
const r4 = require('fhirpath/fhir-context/r4');

const [examplesDir, parametersFile] = process.argv.slice(2);
const bundle = JSON.parse(fs.readFileSync(parametersFile, 'utf8'));

// type -> [{code, expression}]: the parameters that apply to each type, as the server builds them.
const byType = new Map();
for (const { resource: p } of bundle.entry) {
  if (!p.expression || p.type === 'special' || p.type === 'composite') continue;
  for (const base of p.base || []) {
    if (!byType.has(base)) byType.set(base, new Map());
    byType.get(base).set(p.code, p.expression);
  }
}

function adapt(expression) {
  return expression.replace(/resolve\(\) is ([A-Za-z]+)/g,
    (_, type) => `reference.matches('(^|/)${type}/[^/]+(/_history/[^/]+)?$')`);
}

function asOfType(expression) {
  return expression.replace(/\s+as\s+([A-Za-z]+)\)/g, '.ofType($1))').replace(/\.as\(([A-Za-z]+)\)/g, '.ofType($1)');
}

const compiled = new Map();
function compile(expression) {
  if (!compiled.has(expression)) {
    try {
      compiled.set(expression, { run: fhirpath.compile(adapt(expression), r4) });
    } catch (e) {
      compiled.set(expression, { error: String(e.message || e) });
    }
  }
  return compiled.get(expression);
}

const files = fs.readdirSync(examplesDir).filter((f) => f.endsWith('.json') && f !== 'package.json').sort();
const out = [];
for (const file of files) {
  let resource;
  try {
    resource = JSON.parse(fs.readFileSync(path.join(examplesDir, file), 'utf8'));
  } catch (e) {
    continue;
  }
  const type = resource.resourceType;
  if (typeof type !== 'string') continue;
  const params = new Map([...(byType.get('Resource') || []), ...(byType.get('DomainResource') || []), ...(byType.get(type) || [])]);
  for (const [param, expression] of params) {
    const program = compile(expression);
    const line = { file, type, param };
    if (program.error) {
      line.error = program.error;
    } else {
      try {
        line.values = program.run(resource);
      } catch (e) {
        const message = String(e.message || e);
        if (message.includes("singleton on left side of 'as'")) {
          line.adapted = 'as-ofType';
          try {
            line.values = compile(asOfType(expression)).run(resource);
          } catch (e2) {
            line.error = String(e2.message || e2);
          }
        } else {
          line.error = message;
        }
      }
    }
    out.push(JSON.stringify(line));
  }
}
process.stdout.write(out.join('\n') + '\n');
