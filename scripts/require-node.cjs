// Preloaded (node -r) by every npm script before anything else loads, so that an old Node fails with
// one clear line instead of a stack trace from deep inside a dependency.
"use strict";
const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  process.stderr.write(
    `Cairn needs Node.js 22.18 or newer (24 LTS recommended); this is Node.js ${process.versions.node}. See .nvmrc.\n`,
  );
  process.exit(1);
}
