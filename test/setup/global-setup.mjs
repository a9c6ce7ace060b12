// Jest loads this natively (not through its transform), so the project's TypeScript modules are
// imported with Node's own type stripping, exactly as `npm start` runs them.
export default async function globalSetup(config) {
  const { default: setup } = await import("./global-setup.ts");
  return setup(config);
}
