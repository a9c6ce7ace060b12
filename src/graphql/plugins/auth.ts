// The authentication mutations. The logic lives in SQL (crm.login, crm.register, … — see the identity
// migration); this plugin calls them in their own transaction, signs the access token for a session
// the database started, and turns the `{"error": …}` answers (failures that must still commit, such as
// throttling counters and refresh-token reuse) into GraphQL errors with stable codes.
import jwt from "jsonwebtoken";
import { extendSchema, gql } from "postgraphile/utils";
import { constant, lambda, SafeError, type Step } from "postgraphile/grafast";
import { sideEffectWithPgClientTransaction } from "postgraphile/@dataplan/pg";
import type { Config } from "../../config.ts";
import { secretKey } from "../../auth/context.ts";

export interface AuthPluginOptions {
  jwtSecret: string;
  issuer: string;
  audience: string;
  accessTokenTtlSeconds: number;
}

interface SqlSession {
  user_id: string;
  organization_id: string | null;
  session_id: string;
  role: string | null;
  refresh_token: string;
  refresh_token_expires_at: string;
}

interface SqlResult {
  error?: { code: string; message: string; field?: string };
  session?: SqlSession;
  [key: string]: unknown;
}

export function authPluginOptions(config: Config, jwtSecret: string): AuthPluginOptions {
  return {
    jwtSecret,
    issuer: config.jwt.issuer,
    audience: config.jwt.audience,
    accessTokenTtlSeconds: config.jwt.accessTokenTtlSeconds,
  };
}

/** Signs the access token for a session started in SQL. */
export function signAccessToken(opts: AuthPluginOptions, s: SqlSession) {
  const now = Math.floor(Date.now() / 1000);
  const exp = now + opts.accessTokenTtlSeconds;
  const claims: Record<string, unknown> = { sub: s.user_id, sid: s.session_id, iat: now, exp };
  if (s.organization_id) claims.org = s.organization_id;
  if (s.role) claims.role = s.role;
  const accessToken = jwt.sign(claims, secretKey(opts.jwtSecret), { algorithm: "HS256", issuer: opts.issuer, audience: opts.audience });
  return {
    accessToken,
    accessTokenExpiresAt: new Date(exp * 1000).toISOString(),
    refreshToken: s.refresh_token,
    refreshTokenExpiresAt: new Date(s.refresh_token_expires_at).toISOString(),
    userId: s.user_id,
    organizationId: s.organization_id,
    role: s.role,
  };
}

function unwrap(result: SqlResult): SqlResult {
  if (result?.error) {
    const { code, message, field } = result.error;
    throw new SafeError(message, { code, ...(field ? { field } : {}) });
  }
  return result;
}

/** `[sql argument name, input field name]` pairs, in the SQL function's parameter order. */
type ArgMap = [string, string][];

export function makeAuthPlugin(opts: AuthPluginOptions): GraphileConfig.Plugin {
  return extendSchema((build) => {
    const executor = build.input.pgRegistry.pgExecutors.main;
    if (!executor) throw new Error("CairnAuthPlugin: no main PostgreSQL executor");
    const call = ($input: Step, fn: string, args: ArgMap) =>
      sideEffectWithPgClientTransaction(executor, $input, async (client, input): Promise<SqlResult> => {
        const values = args.map(([, field]) => {
          const v = (input as Record<string, unknown> | null)?.[field];
          return v === undefined ? null : v;
        });
        const params = args.map(([name], i) => `${name} => $${i + 1}`).join(", ");
        const { rows } = await client.query<{ r: SqlResult }>({ text: `select crm.${fn}(${params}) as r`, values });
        return rows[0]!.r;
      });
    const session = (r: SqlResult) => (r.session ? signAccessToken(opts, r.session) : null);
    const withInput = (fn: string, args: ArgMap, shape: (r: SqlResult) => unknown) =>
      function plan(_: Step, fieldArgs: { getRaw: (path: string) => Step }) {
        return lambda(call(fieldArgs.getRaw("input"), fn, args), (r) => shape(unwrap(r)));
      };
    const withoutInput = (fn: string, shape: (r: SqlResult) => unknown) =>
      function plan() {
        return lambda(call(constant(null), fn, []), (r) => shape(unwrap(r)));
      };
    const authPayload = (r: SqlResult) => ({ session: session(r) });
    const success = (r: SqlResult) => ({ success: r.success === true });

    return {
      typeDefs: gql`
        """
        Tokens for a session: a short-lived access token (send it as \`Authorization: Bearer …\`) and an
        opaque refresh token for \`refreshToken\` (single use: each refresh returns a new one).
        """
        type AuthSession {
          accessToken: String!
          accessTokenExpiresAt: Datetime!
          refreshToken: String!
          refreshTokenExpiresAt: Datetime!
          userId: UUID!
          "The organization the access token is for (null for a user without organizations)."
          organizationId: UUID
          "The caller's role in that organization."
          role: String
        }
        type AuthPayload {
          session: AuthSession
        }
        type SuccessPayload {
          success: Boolean!
        }
        type LogoutAllPayload {
          success: Boolean!
          sessionsEnded: Int!
        }
        input RegisterInput {
          username: String!
          email: String!
          password: String!
          fullName: String
          "When given, an organization is created with the new user as its Administrator."
          organizationName: String
        }
        type RegisterPayload {
          userId: UUID!
          organizationId: UUID
          "True when sign-in waits for the confirmation email (no session is returned then)."
          emailConfirmationRequired: Boolean!
          session: AuthSession
        }
        input LoginInput {
          "Username or email address."
          login: String!
          password: String!
          "Organization id or slug; defaults to the only or the last used organization."
          organization: String
        }
        input RefreshTokenInput {
          refreshToken: String!
        }
        input SwitchOrganizationInput {
          "Organization id or slug."
          organization: String!
        }
        input CreateOrganizationInput {
          name: String!
          slug: String
        }
        input ConfirmEmailInput {
          token: String!
        }
        input RequestPasswordResetInput {
          email: String!
        }
        input ResetPasswordInput {
          token: String!
          newPassword: String!
        }
        input ChangePasswordInput {
          currentPassword: String!
          newPassword: String!
        }
        input AcceptInvitationInput {
          "The token from the invitation e-mail (newcomers, or anyone following the e-mailed link)."
          token: String
          "Signed in: the id of an invitation listed in \`myInvitations\` (instead of the token)."
          invitationId: UUID
          "For a newcomer without an account: the account to create."
          username: String
          password: String
          fullName: String
        }
        extend type Mutation {
          "Create an account (and optionally an organization); queues the confirmation email."
          register(input: RegisterInput!): RegisterPayload
          "Sign in with username or email and password."
          login(input: LoginInput!): AuthPayload
          "Exchange a refresh token for a new token pair. Reusing a spent refresh token ends the session."
          refreshToken(input: RefreshTokenInput!): AuthPayload
          "End this session; its access token stops working at once."
          logout: SuccessPayload
          "End every session of the signed-in user."
          logoutAll: LogoutAllPayload
          "A new token pair for another organization the user belongs to."
          switchOrganization(input: SwitchOrganizationInput!): AuthPayload
          "Create an organization with the signed-in user as Administrator; returns tokens for it."
          createOrganization(input: CreateOrganizationInput!): AuthPayload
          confirmEmail(input: ConfirmEmailInput!): SuccessPayload
          resendEmailConfirmation: SuccessPayload
          "Always answers success, whether or not the address has an account."
          requestPasswordReset(input: RequestPasswordResetInput!): SuccessPayload
          "Set a new password with a reset token; ends every session of the user."
          resetPassword(input: ResetPasswordInput!): SuccessPayload
          "Change the signed-in user's password; other sessions end."
          changePassword(input: ChangePasswordInput!): SuccessPayload
          "Join an organization: with the e-mailed token (creating the account for a newcomer), or signed in, with an invitation id from \`myInvitations\`."
          acceptInvitation(input: AcceptInvitationInput!): AuthPayload
        }
      `,
      objects: {
        Mutation: {
          plans: {
            register: withInput(
              "register",
              [
                ["username", "username"],
                ["email", "email"],
                ["password", "password"],
                ["full_name", "fullName"],
                ["organization_name", "organizationName"],
              ],
              (r) => ({
                userId: r.user_id,
                organizationId: r.organization_id ?? null,
                emailConfirmationRequired: r.email_confirmation_required === true,
                session: session(r),
              }),
            ),
            login: withInput(
              "login",
              [
                ["identifier", "login"],
                ["password", "password"],
                ["organization", "organization"],
              ],
              authPayload,
            ),
            refreshToken: withInput("refresh_session", [["refresh_token", "refreshToken"]], authPayload),
            logout: withoutInput("logout", success),
            logoutAll: withoutInput("logout_all", (r) => ({ success: r.success === true, sessionsEnded: Number(r.sessions_ended ?? 0) })),
            switchOrganization: withInput("switch_organization", [["organization", "organization"]], authPayload),
            createOrganization: withInput(
              "create_organization",
              [
                ["name", "name"],
                ["slug", "slug"],
              ],
              authPayload,
            ),
            confirmEmail: withInput("confirm_email", [["token", "token"]], success),
            resendEmailConfirmation: withoutInput("resend_email_confirmation", success),
            requestPasswordReset: withInput("request_password_reset", [["email", "email"]], success),
            resetPassword: withInput(
              "reset_password",
              [
                ["token", "token"],
                ["new_password", "newPassword"],
              ],
              success,
            ),
            changePassword: withInput(
              "change_password",
              [
                ["current_password", "currentPassword"],
                ["new_password", "newPassword"],
              ],
              success,
            ),
            acceptInvitation: withInput(
              "accept_invitation",
              [
                ["token", "token"],
                ["username", "username"],
                ["password", "password"],
                ["full_name", "fullName"],
                ["invitation_id", "invitationId"],
              ],
              authPayload,
            ),
          },
        },
      },
    };
  }, "CairnAuthPlugin");
}
