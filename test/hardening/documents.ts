// Abusive GraphQL documents (those of the incident report, and the classes GraphQL-armor documents),
// each with the limit that must refuse it under the default budget. Shared by the abuse test and
// `npm run bench -- abuse`.
export interface AbusiveDocument {
  name: string;
  query: string;
  variables?: Record<string, unknown>;
  limit: string;
}

const fanOutFragments = (levels: number, on = "Query", root = "{ ...F0 }") => {
  let doc = `${root}\n`;
  for (let i = 0; i < levels; i++) doc += `fragment F${i} on ${on} { __typename ...F${i + 1} ...F${i + 1} }\n`;
  return doc + `fragment F${levels} on ${on} { __typename }\n`;
};

const nestedRelation = (levels: number) => {
  let inner = "name";
  for (let i = 0; i < levels; i++) inner = `customer { deals(first: 1) { nodes { ${inner} } } }`;
  return `{ deals(first: 1) { nodes { ${inner} } } }`;
};

export const ABUSIVE_DOCUMENTS: AbusiveDocument[] = [
  {
    name: "2,000 aliases of customers(first: 100)",
    query: "{ " + Array.from({ length: 2000 }, (_, i) => `a${i}: customers(first: 100) { nodes { name } }`).join(" ") + " }",
    limit: "documentBytes",
  },
  {
    name: "5,000 aliases of search",
    query: "{ " + Array.from({ length: 5000 }, (_, i) => `s${i}: search(query: "a") { nodes { title } }`).join(" ") + " }",
    limit: "documentBytes",
  },
  {
    name: "40 aliases inside one selection",
    query: `{ customers(first: 1) { nodes { ${Array.from({ length: 40 }, (_, i) => `a${i}: name`).join(" ")} } } }`,
    limit: "aliases",
  },
  {
    name: "25 root fields",
    query: `{ ${Array.from({ length: 25 }, () => "customers(first: 1) { totalCount }").join(" ")} }`,
    limit: "rootFields",
  },
  // At the root, every expanded __typename is a root field.
  { name: "fragments doubling 20 levels deep (1 KB)", query: fanOutFragments(20), limit: "rootFields" },
  { name: "fragments doubling 100 levels deep", query: fanOutFragments(100), limit: "rootFields" },
  {
    name: "fragments doubling 30 levels deep inside a list",
    query: fanOutFragments(30, "Customer", "{ customers(first: 1) { nodes { ...F0 } } }"),
    limit: "fields",
  },
  { name: "a relation nested 20 levels deep", query: nestedRelation(20), limit: "depth" },
  {
    name: "1,200 fields in one selection",
    query: `{ customers(first: 1) { nodes { ${"name ".repeat(1200)}} } }`,
    limit: "fields",
  },
  {
    name: "6,000 tokens in an argument",
    query: `{ customers(filter: { leadScore: { in: [${"1 ".repeat(6000)}] } }) { totalCount } }`,
    limit: "tokens",
  },
  { name: "25 directives on one field", query: `{ __typename ${"@include(if: true) ".repeat(25)}}`, limit: "directives" },
  {
    name: "list fan-out 100 × 100 × 100",
    query: `{ customers(first: 100) { nodes { deals(first: 100) { nodes { tasks(first: 100) { nodes { title } } } } } } }`,
    limit: "listItems",
  },
  {
    name: "list fan-out through variables",
    query: `query ($n: Int) { customers(first: $n) { nodes { deals(first: $n) { nodes { tasks(first: $n) { nodes { title } } } } } } }`,
    variables: { n: 100 },
    limit: "listItems",
  },
  { name: "60 KB document", query: `{ __typename } # ${"x".repeat(60_000)}`, limit: "documentBytes" },
];
