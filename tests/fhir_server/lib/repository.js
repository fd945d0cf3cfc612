'use strict';
// Medplum's MemoryRepository, made to behave like a server's store.
//
// - Every write (create, update, and so conditional create/update and patch) is validated
//   against the indexed R5 base StructureDefinitions; errors raise a 400 OperationOutcome.
//   meta.profile is not checked (the IG's profiles are not loaded).
// - versionId is a counter per resource ("1", "2", ...) and lastUpdated is server-assigned;
//   whatever the client put there is ignored.
// - readHistory returns newest first without reordering the stored history (Medplum's
//   reverses the stored array in place on every call).
// - A conditional reference (Reference.reference "Type?query") is replaced by a reference to
//   its single match on every write, 400 when it matches none or several, as Medplum's server
//   repository does (medplum/medplum packages/server/src/fhir/references.ts,
//   replaceConditionalReferences / resolveReplacementReference, called from repo.ts
//   updateResourceImpl on create and update); MemoryRepository does not.
// withTransaction is MemoryRepository's: it just runs the callback (no rollback).

const {
  badRequest,
  createReference,
  deepClone,
  OperationOutcomeError,
  parseSearchRequest,
  validateResource,
} = require('@medplum/core');
const { MemoryRepository } = require('@medplum/fhir-router');

class R5MemoryRepository extends MemoryRepository {
  /** @param {{ validate: boolean }} options */
  constructor({ validate }) {
    super();
    this.validate = validate;
  }

  async createResource(input) {
    const resource = await this.replaceConditionalReferences(deepClone(input));
    const id = resource.id || this.generateId();
    const versions = this.history.get(resource.resourceType)?.get(id)?.length ?? 0;
    const stored = {
      ...resource,
      id,
      meta: { ...resource.meta, versionId: String(versions + 1), lastUpdated: new Date().toISOString() },
    };
    if (this.validate) {
      validateResource(stored); // throws OperationOutcomeError on errors; warnings are dropped
    }
    return super.createResource(stored);
  }

  /** Medplum server's replaceConditionalReferences: every Reference whose reference holds a '?'. */
  async replaceConditionalReferences(value, path = value?.resourceType ?? '') {
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        value[i] = await this.replaceConditionalReferences(value[i], `${path}[${i}]`);
      }
      return value;
    }
    if (value === null || typeof value !== 'object') {
      return value;
    }
    if (typeof value.reference === 'string' && value.reference.includes('?')) {
      const search = parseSearchRequest(value.reference);
      search.sortRules = undefined;
      search.count = 2;
      const matches = await this.searchResources(search);
      if (matches.length !== 1) {
        const what = matches.length ? 'matched multiple' : 'did not match any';
        throw new OperationOutcomeError(badRequest(`Conditional reference '${value.reference}' ${what} resources`, path));
      }
      return createReference(matches[0]);
    }
    for (const key of Object.keys(value)) {
      value[key] = await this.replaceConditionalReferences(value[key], path ? `${path}.${key}` : key);
    }
    return value;
  }

  async exists(resourceType, id) {
    return Boolean(this.resources.get(resourceType)?.has(id));
  }

  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      entry: versions.map((version) => ({ resource: deepClone(version) })),
    };
  }
}

module.exports = { R5MemoryRepository };
