// Relation names for tenant-composite foreign keys. Every reference carries the tenant
// ((organization_id, customer_id) → customers), which would otherwise produce names like
// `contactsByOrganizationIdAndCustomerId`; the organization column is left out of the name, and of
// several remaining columns the last one names the relation (stage_id → `stage`).
export const TenantKeyInflectionPlugin: GraphileConfig.Plugin = {
  name: "CairnTenantKeyInflectionPlugin",
  version: "1.0.0",
  after: ["PgSimplifyInflectionPlugin"],
  inflection: {
    replace: {
      _getBaseNameFromKeys(previous, _preset, detailedKeys) {
        const keys = detailedKeys.filter((k) => k.attributeName !== "organization_id");
        if (keys.length > 0 && keys.length < detailedKeys.length) return previous!([keys[keys.length - 1]!]);
        return previous!(detailedKeys);
      },
    },
  },
};
