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
// - snapshot()/restore() let the transaction processor make a transaction all-or-nothing.

const { deepClone, validateResource } = require('@medplum/core');
const { MemoryRepository } = require('@medplum/fhir-router');

class R5MemoryRepository extends MemoryRepository {
  /** @param {{ validate: boolean }} options */
  constructor({ validate }) {
    super();
    this.validate = validate;
  }

  async createResource(resource) {
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

  snapshot() {
    return {
      resources: new Map([...this.resources].map(([type, byId]) => [type, new Map(byId)])),
      history: new Map(
        [...this.history].map(([type, byId]) => [type, new Map([...byId].map(([id, vs]) => [id, [...vs]]))])
      ),
    };
  }

  restore(snapshot) {
    this.resources.clear();
    this.history.clear();
    for (const [type, byId] of snapshot.resources) {
      this.resources.set(type, byId);
    }
    for (const [type, byId] of snapshot.history) {
      this.history.set(type, byId);
    }
  }
}

module.exports = { R5MemoryRepository };
