export const TEMPLATE_DB = "cairn_test_template";
export const TEST_PASSWORDS = { owner: "cairn-test-owner", authenticator: "cairn-test-authenticator" };
/** Set by the global setup for the test workers: the superuser URL of the test server. */
export const ROOT_URL_ENV = "CAIRN_TEST_ROOT_URL";
