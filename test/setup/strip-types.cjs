// Jest transform for the project's TypeScript: Node's own type stripping (the same that runs the
// service), so tests need no compiler and no native binaries. Types are replaced by whitespace, so
// line and column numbers in stack traces stay right without source maps.
"use strict";
const { stripTypeScriptTypes } = require("node:module");
const crypto = require("node:crypto");

module.exports = {
  process(source) {
    return { code: stripTypeScriptTypes(source, { mode: "strip" }) };
  },
  getCacheKey(source, filename) {
    return crypto.createHash("sha1").update(process.version).update(filename).update(source).digest("hex");
  },
};
