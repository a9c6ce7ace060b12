// The door every GraphQL document goes through before anything expensive happens: a size and token
// budget while parsing, a cost budget (depth, aliases, directives, root fields, fields after fragment
// expansion, list items), GraphQL validation, and a bounded cache of the results.
//
// Order matters. graphql-js's own validation rules (OverlappingFieldsCanBeMerged above all) cost time
// exponential in the nesting of fragments, so they run last, only on documents the budget accepted:
// 1. size (characters), then parse with graphql-js's `maxTokens`;
// 2. our own walk: total fields after fragment expansion, root fields, list items (see below),
//    NUL characters in literals. Each fragment is measured once (memoized), so a 1 KB document whose
//    fragments double at every level is measured in microseconds instead of expanded 2^n times;
// 3. the GraphQL-armor rules (max-depth, max-aliases, max-directives), alone in one validation pass
//    (they memoize fragments too);
// 4. graphql-js `specifiedRules` (+ NoSchemaIntrospectionCustomRule when introspection is off).
//
// Why some of it is ours: GraphQL-armor has no rule for root fields, for the number of fields after
// fragment expansion, or for list fan-out that understands variables and default page sizes (its
// cost-limit rule only reads literal `first` values and knows nothing of a connection's default
// page), and a rule cannot see the request's variables at all. List items are therefore computed
// per request, from the document and the variables, just before execution (checkVariables).
import crypto from "node:crypto";
import { LRU } from "@graphile/lru";
import { maxAliasesRule } from "@escape.tech/graphql-armor-max-aliases";
import { maxDepthRule } from "@escape.tech/graphql-armor-max-depth";
import { maxDirectivesRule } from "@escape.tech/graphql-armor-max-directives";
import {
  GraphQLError,
  Kind,
  Lexer,
  NoSchemaIntrospectionCustomRule,
  Source,
  TokenKind,
  getNamedType,
  isInterfaceType,
  isObjectType,
  parse,
  specifiedRules,
  validate,
  visit,
  type DocumentNode,
  type FragmentDefinitionNode,
  type GraphQLField,
  type GraphQLNamedType,
  type GraphQLSchema,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type ValidationRule,
  type ValueNode,
} from "postgraphile/graphql";

export interface GraphqlLimits {
  /** Characters in the document. */
  maxDocumentBytes: number;
  /** Lexical tokens in the document (graphql-js parse option). */
  maxTokens: number;
  /** Nesting of fields (fragments add no depth; introspection's `__schema` is exempt). */
  maxDepth: number;
  maxAliases: number;
  maxDirectives: number;
  /** Fields selected at the root of the operation (after fragment expansion). */
  maxRootFields: number;
  /** Fields selected in total, every fragment spread counted as if written out. */
  maxFields: number;
  /** List items the response can hold: for every paginated field, the product of the page sizes
   *  (`first`, or the default page) along its path, summed over the operation. */
  maxListItems: number;
}

export interface GateOptions {
  limits: GraphqlLimits;
  introspection: boolean;
  suggestions: boolean;
  /** Documents whose parse/validation result is kept (LRU). */
  cacheSize: number;
  /** Page size when a paginated field has no `first` and no default. */
  defaultPageSize: number;
  onRefused?: (limit: string) => void;
  onInvalid?: (code: string) => void;
}

export type LimitName =
  | "documentBytes"
  | "tokens"
  | "depth"
  | "aliases"
  | "directives"
  | "rootFields"
  | "fields"
  | "listItems";

const SETTING: Record<LimitName, string> = {
  documentBytes: "GRAPHQL_MAX_DOCUMENT_BYTES",
  tokens: "GRAPHQL_MAX_TOKENS",
  depth: "GRAPHQL_MAX_DEPTH",
  aliases: "GRAPHQL_MAX_ALIASES",
  directives: "GRAPHQL_MAX_DIRECTIVES",
  rootFields: "GRAPHQL_MAX_ROOT_FIELDS",
  fields: "GRAPHQL_MAX_FIELDS",
  listItems: "GRAPHQL_MAX_LIST_ITEMS",
};

const DESCRIPTION: Record<LimitName, string> = {
  documentBytes: "characters in the document",
  tokens: "tokens in the document",
  depth: "levels of nesting",
  aliases: "aliases",
  directives: "directives",
  rootFields: "root fields",
  fields: "fields after fragment expansion",
  listItems: "list items (page sizes multiplied along each path, summed)",
};

/** The error for a document over budget: HTTP 400, code QUERY_TOO_COMPLEX, naming the limit. */
export function tooComplex(limit: LimitName, max: number, value: number | string): GraphQLError {
  return new GraphQLError(`The operation is too complex: ${value} ${DESCRIPTION[limit]}, the limit is ${max}.`, {
    extensions: { code: "QUERY_TOO_COMPLEX", limit, max, value, setting: SETTING[limit] },
  });
}

interface Entry {
  document?: DocumentNode;
  errors?: readonly GraphQLError[];
  /** Whether graphql-js validation has run (it runs lazily, once). */
  validated?: boolean;
}

export type ParseAndValidateResult = { document: DocumentNode; errors?: undefined } | { document?: undefined; errors: readonly GraphQLError[] };

const SUGGESTION = /\s*Did you mean [^?]*\?$/;

function validationError(e: GraphQLError, suggestions: boolean): GraphQLError {
  const message = suggestions ? e.message : e.message.replace(SUGGESTION, "");
  return new GraphQLError(message, {
    nodes: e.nodes,
    source: e.source,
    positions: e.positions,
    extensions: { ...e.extensions, code: "GRAPHQL_VALIDATION" },
  });
}

/** Measures fields, root fields and list items, each fragment once. */
class Measure {
  private fields = new Map<string, number>();
  private roots = new Map<string, number>();
  private items = new Map<string, number>();
  private readonly fragments: Record<string, FragmentDefinitionNode>;
  private readonly schema: GraphQLSchema | undefined;
  private readonly variables: Record<string, unknown>;
  private readonly variableDefaults: Record<string, ValueNode | undefined>;
  private readonly defaultPage: number;

  constructor(
    document: DocumentNode,
    schema: GraphQLSchema | undefined,
    variables: Record<string, unknown>,
    operation: OperationDefinitionNode | undefined,
    pages: { defaultPage: number },
  ) {
    this.fragments = Object.create(null);
    for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) this.fragments[d.name.value] = d;
    this.schema = schema;
    this.variables = variables;
    this.variableDefaults = Object.create(null);
    for (const v of operation?.variableDefinitions ?? []) this.variableDefaults[v.variable.name.value] = v.defaultValue;
    this.defaultPage = pages.defaultPage;
  }

  /** Fields in a selection set with every fragment written out. */
  fieldCount(set: SelectionSetNode | undefined, seen: Set<string> = new Set()): number {
    if (!set) return 0;
    let n = 0;
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) n += 1 + this.fieldCount(s.selectionSet, seen);
      else if (s.kind === Kind.INLINE_FRAGMENT) n += this.fieldCount(s.selectionSet, seen);
      else n += this.memo(this.fields, s.name.value, seen, (f) => this.fieldCount(f.selectionSet, seen));
    }
    return n;
  }

  /** Fields directly in a selection set (through fragments, not into nested fields). */
  rootCount(set: SelectionSetNode, seen: Set<string> = new Set()): number {
    let n = 0;
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) n += 1;
      else if (s.kind === Kind.INLINE_FRAGMENT) n += this.rootCount(s.selectionSet, seen);
      else n += this.memo(this.roots, s.name.value, seen, (f) => this.rootCount(f.selectionSet, seen));
    }
    return n;
  }

  /** List items below a selection set of `type`, for one item of the parent. */
  itemCount(set: SelectionSetNode | undefined, type: GraphQLNamedType | undefined, seen: Set<string> = new Set()): number {
    if (!set) return 0;
    let n = 0;
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) {
        const def = type && (isObjectType(type) || isInterfaceType(type)) ? type.getFields()[s.name.value] : undefined;
        const page = def ? this.pageSize(s.arguments ?? [], def) : null;
        const child = this.itemCount(s.selectionSet, def ? getNamedType(def.type) : undefined, seen);
        n += page === null ? child : page + page * child;
      } else if (s.kind === Kind.INLINE_FRAGMENT) {
        const t = s.typeCondition ? this.schema?.getType(s.typeCondition.name.value) : type;
        n += this.itemCount(s.selectionSet, t ?? undefined, seen);
      } else {
        n += this.memo(this.items, s.name.value, seen, (f) =>
          this.itemCount(f.selectionSet, this.schema?.getType(f.typeCondition.name.value) ?? undefined, seen),
        );
      }
    }
    return n;
  }

  /** The page size of a paginated field (one with a `first` argument), or null for other fields. */
  private pageSize(args: readonly { name: { value: string }; value: ValueNode }[], def: GraphQLField<unknown, unknown>): number | null {
    const firstArg = def.args.find((a) => a.name === "first");
    if (!firstArg) return null;
    const given = args.find((a) => a.name.value === "first")?.value;
    const fallback = typeof firstArg.defaultValue === "number" ? firstArg.defaultValue : this.defaultPage;
    if (!given) return fallback;
    if (given.kind === Kind.INT) return Number(given.value);
    if (given.kind === Kind.VARIABLE) {
      const name = given.name.value;
      const v = name in this.variables ? this.variables[name] : undefined;
      if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) <= 2_147_483_647) return Math.max(0, v);
      if (v === null) return fallback;
      const d = this.variableDefaults[name];
      if (v === undefined && d?.kind === Kind.INT) return Number(d.value);
      if (v === undefined) return fallback;
      // Not an Int: variable coercion refuses the request before anything runs.
      return 0;
    }
    return fallback;
  }

  private memo(cache: Map<string, number>, name: string, seen: Set<string>, measure: (f: FragmentDefinitionNode) => number): number {
    const known = cache.get(name);
    if (known !== undefined) return known;
    const fragment = this.fragments[name];
    // Unknown or cyclic fragments are left to validation (NoFragmentCycles, KnownFragmentNames).
    if (!fragment || seen.has(name)) return 0;
    seen.add(name);
    const n = measure(fragment);
    seen.delete(name);
    cache.set(name, n);
    return n;
  }
}

function operationsOf(document: DocumentNode): OperationDefinitionNode[] {
  return document.definitions.filter((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION);
}

/** The path of input names leading to a string literal, e.g. `input.customer.name`. */
function literalPath(ancestors: readonly unknown[]): string[] {
  const names: string[] = [];
  for (const a of ancestors) {
    const node = a as { kind?: string; name?: { value: string } };
    if (node && (node.kind === Kind.ARGUMENT || node.kind === Kind.OBJECT_FIELD) && node.name) names.push(node.name.value);
  }
  return names;
}

/** The error for a string PostgreSQL cannot store (NUL), naming the input field. */
export function nulCharacterError(path: string[]): GraphQLError {
  const field = path[path.length - 1] ?? "input";
  return new GraphQLError(`${field} must not contain NUL (\\u0000) characters: PostgreSQL cannot store them.`, {
    extensions: { code: "VALIDATION", field, inputPath: path.join(".") },
  });
}

/** The first string containing NUL in a JSON value (variables), as a path, or null. */
export function findNul(value: unknown, path: string[]): string[] | null {
  if (typeof value === "string") return value.includes("\u0000") ? path : null;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findNul(value[i], path);
      if (found) return found;
    }
    return null;
  }
  if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k.includes("\u0000")) return [...path, k];
      const found = findNul(v, [...path, k]);
      if (found) return found;
    }
  }
  return null;
}

function countTokens(source: string, cap: number): number {
  const lexer = new Lexer(new Source(source));
  let n = 0;
  try {
    while (lexer.advance().kind !== TokenKind.EOF && n < cap) n++;
  } catch {
    // A syntax error past the limit: the count so far is what we report.
  }
  return n;
}

export class DocumentGate {
  private readonly cache: LRU<string, Entry>;
  private readonly opts: GateOptions;
  private readonly armorRules: ValidationRule[];
  private readonly armorRejections: { limit: LimitName; max: number; value: number }[] = [];

  constructor(opts: GateOptions) {
    this.opts = opts;
    this.cache = new LRU({ maxLength: Math.max(2, opts.cacheSize) });
    const { limits } = opts;
    const reject = (limit: LimitName, max: number) => (_ctx: unknown, err: GraphQLError) => {
      const found = /found (\d+)/.exec(err.message);
      this.armorRejections.push({ limit, max, value: found ? Number(found[1]) : max + 1 });
    };
    const common = { propagateOnRejection: false, exposeLimits: true };
    this.armorRules = [
      maxDepthRule({ ...common, n: limits.maxDepth, flattenFragments: true, ignoreIntrospection: true, onReject: [reject("depth", limits.maxDepth)] }),
      maxAliasesRule({ ...common, n: limits.maxAliases, onReject: [reject("aliases", limits.maxAliases)] }),
      maxDirectivesRule({ ...common, n: limits.maxDirectives, onReject: [reject("directives", limits.maxDirectives)] }),
    ] as unknown as ValidationRule[];
  }

  private key(query: string): string {
    return query.length > 500 ? crypto.createHash("sha1").update(query).digest("base64") : query;
  }

  /** grafserv's parseAndValidate: budget, parse, validation; cached per document text. */
  parseAndValidate(schema: GraphQLSchema, query: string): ParseAndValidateResult {
    const key = this.key(query);
    let entry = this.cache.get(key);
    if (!entry) {
      entry = this.analyse(schema, query);
      this.cache.set(key, entry);
    }
    if (entry.document && !entry.validated) {
      const rules = this.opts.introspection ? specifiedRules : [...specifiedRules, NoSchemaIntrospectionCustomRule];
      const errors = validate(schema, entry.document, rules);
      entry.validated = true;
      if (errors.length) {
        entry.errors = errors.map((e) => validationError(e, this.opts.suggestions));
        entry.document = undefined;
      }
    }
    if (entry.errors) {
      const code = entry.errors[0]?.extensions?.code;
      if (code === "QUERY_TOO_COMPLEX") this.opts.onRefused?.(String(entry.errors[0]?.extensions?.limit));
      else this.opts.onInvalid?.(String(code));
      return { errors: entry.errors };
    }
    return { document: entry.document! };
  }

  private analyse(schema: GraphQLSchema, query: string): Entry {
    const { limits } = this.opts;
    if (query.length > limits.maxDocumentBytes) return { errors: [tooComplex("documentBytes", limits.maxDocumentBytes, query.length)] };
    let document: DocumentNode;
    try {
      document = parse(new Source(query, "GraphQL request"), { maxTokens: limits.maxTokens });
    } catch (e) {
      const err = e as GraphQLError;
      // graphql-js: "Document contains more that N tokens" (sic).
      if (/more th(?:an|at) \d+ tokens/.test(err.message)) {
        return { errors: [tooComplex("tokens", limits.maxTokens, countTokens(query, limits.maxTokens * 100))] };
      }
      return { errors: [validationError(err, this.opts.suggestions)] };
    }
    const measure = new Measure(document, undefined, {}, undefined, { defaultPage: 0 });
    for (const op of operationsOf(document)) {
      const roots = measure.rootCount(op.selectionSet);
      if (roots > limits.maxRootFields) return { errors: [tooComplex("rootFields", limits.maxRootFields, roots)] };
      const fields = measure.fieldCount(op.selectionSet);
      if (fields > limits.maxFields) return { errors: [tooComplex("fields", limits.maxFields, fields)] };
    }
    this.armorRejections.length = 0;
    validate(schema, document, this.armorRules);
    const rejected = this.armorRejections[0];
    if (rejected) return { errors: [tooComplex(rejected.limit, rejected.max, rejected.value)] };
    let nul: string[] | null = null;
    visit(document, {
      StringValue(node, _key, parent, _path, ancestors) {
        if (!nul && node.value.includes("\u0000")) nul = literalPath([...ancestors, parent]);
      },
    });
    if (nul) return { errors: [nulCharacterError(nul)] };
    return { document };
  }

  /**
   * Per request, before execution: the list items the operation can return with these variables, and
   * strings PostgreSQL cannot store. Returns the error to answer with, or null.
   */
  checkVariables(
    schema: GraphQLSchema,
    document: DocumentNode,
    operationName: string | null | undefined,
    variables: Record<string, unknown> | null | undefined,
  ): GraphQLError | null {
    const vars = variables ?? {};
    // Counted and logged by maskError, like every error answered after this point.
    const nul = findNul(vars, []);
    if (nul) return nulCharacterError(nul);
    const ops = operationsOf(document);
    const op = operationName ? ops.find((o) => o.name?.value === operationName) : ops.length === 1 ? ops[0] : undefined;
    if (!op) return null;
    const root = op.operation === "query" ? schema.getQueryType() : op.operation === "mutation" ? schema.getMutationType() : schema.getSubscriptionType();
    const measure = new Measure(document, schema, vars, op, { defaultPage: this.opts.defaultPageSize });
    const items = measure.itemCount(op.selectionSet, root ?? undefined);
    const max = this.opts.limits.maxListItems;
    if (items > max) return tooComplex("listItems", max, items);
    return null;
  }
}
