// Preloaded (node -r) by every npm script before anything else loads, so that an old Node fails with
// one clear line instead of a stack trace from deep inside a dependency.
"use strict";

/** The one-line complaint for a Node version older than 22.18, or null. */
function nodeVersionProblem(version) {
  const [major, minor] = version.split(".").map(Number);
  if (major < 22 || (major === 22 && minor < 18)) {
    return `Cairn needs Node.js 22.18 or newer (24 LTS recommended); this is Node.js ${version}. See .nvmrc.`;
  }
  return null;
}

const problem = nodeVersionProblem(process.versions.node);
if (problem) {
  process.stderr.write(`${problem}\n`);
  process.exit(1);
}
module.exports = { nodeVersionProblem };
