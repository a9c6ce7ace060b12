export default async function globalTeardown(config) {
  const { default: teardown } = await import("./global-teardown.ts");
  return teardown(config);
}
