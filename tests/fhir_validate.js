#!/usr/bin/env node
// The offline FHIR R4 referees of tests/test_fhir.py: the FHIR R4 JSON schema
// (@asymmetrik/fhir-json-schema-validator) and FHIR.js (`fhir`), which also checks required
// code bindings (status, gender, ...) and reports other bindings' misses as warnings.
//
// Usage: node tests/fhir_validate.js BUNDLE.json...
// Prints one JSON object {ok, files: [{file, schema: [...], fhirjs: {errors, warnings}}]} and
// exits 1 when any file has an error (2 on bad usage). The node_modules folder is taken from
// $ANAXREPORT_NODE_MODULES/node_modules, else from .ci-node/node_modules in the repository root.
"use strict";

const fs = require("fs");
const path = require("path");

const base = process.env.ANAXREPORT_NODE_MODULES || path.join(__dirname, "..", ".ci-node");
const load = (name) => require(require.resolve(name, { paths: [base] }));

const JSONSchemaValidator = load("@asymmetrik/fhir-json-schema-validator");
const { Fhir } = load("fhir");

const schema = new JSONSchemaValidator();
const fhir = new Fhir();
const PLACEHOLDER = { resourceType: "Basic", code: { text: "placeholder" } };

// The package's validate() recompiles the whole schema for each invalid resource (seconds);
// a per-type validator, compiled on first need, gives the same concise messages.
const { oneOf: _allResources, discriminator, ...definitions } = schema.schema;
schema.ajv.addSchema(definitions, "fhir-r4");
const knownTypes = new Set(Object.keys(discriminator.mapping));

function schemaErrorsOf(resource, where) {
  const type = resource.resourceType;
  if (!knownTypes.has(type)) return [`${where}: invalid resourceType '${type}'`];
  if (schema.validator(resource)) return [];
  const validate = schema.ajv.getSchema(`fhir-r4#/definitions/${type}`);
  validate(resource);
  return (validate.errors || []).map((e) => `${where}${e.dataPath}: ${e.message}`);
}

function schemaErrors(bundle) {
  // The Bundle with each resource replaced by a minimal valid one (a wrong resource would
  // otherwise fail every branch of the schema's union of all resource types), then each
  // resource on its own, so that the messages name the element at fault.
  const entries = bundle.entry || [];
  const shell = {
    ...bundle,
    entry: entries.map((entry) => ({ ...entry, resource: PLACEHOLDER })),
  };
  const errors = schemaErrorsOf(shell, "Bundle");
  entries.forEach((entry, i) => {
    const resource = entry.resource || {};
    const where = `Bundle.entry[${i}].resource(${resource.resourceType})`;
    errors.push(...schemaErrorsOf(resource, where));
  });
  return errors;
}

function fhirjsMessages(bundle) {
  const result = fhir.validate(bundle, { errorOnUnexpected: true });
  const text = (m) => `${m.location}: ${m.message}`;
  return {
    errors: result.messages.filter((m) => m.severity === "error" || m.severity === "fatal").map(text),
    warnings: result.messages.filter((m) => m.severity === "warning").map(text),
  };
}

function main(files) {
  if (files.length === 0) {
    process.stderr.write("usage: node fhir_validate.js BUNDLE.json...\n");
    return 2;
  }
  const results = files.map((file) => {
    const bundle = JSON.parse(fs.readFileSync(file, "utf8"));
    return { file, schema: schemaErrors(bundle), fhirjs: fhirjsMessages(bundle) };
  });
  const ok = results.every((r) => r.schema.length === 0 && r.fhirjs.errors.length === 0);
  process.stdout.write(JSON.stringify({ ok, files: results }, null, 1) + "\n");
  return ok ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
