// Outbound safety for webhook deliveries: only https (http when WEBHOOKS_ALLOW_HTTP), and never a
// private, loopback, link-local (cloud metadata), CGNAT, unique-local or multicast address unless
// WEBHOOKS_ALLOW_PRIVATE_NETWORKS. The check runs inside the connection's DNS lookup, so the address
// checked is the address connected to (a host that re-resolves to 127.0.0.1 — DNS rebinding — is
// refused at connect time). Keep the ranges in step with crm_private.is_blocked_address.
import dns from "node:dns";
import net from "node:net";

const blockedV4 = new net.BlockList();
for (const [a, bits] of [
  ["0.0.0.0", 8], ["10.0.0.0", 8], ["100.64.0.0", 10], ["127.0.0.0", 8], ["169.254.0.0", 16], ["172.16.0.0", 12],
  ["192.0.0.0", 24], ["192.168.0.0", 16], ["198.18.0.0", 15], ["224.0.0.0", 4], ["240.0.0.0", 4],
] as const) {
  blockedV4.addSubnet(a, bits, "ipv4");
}
const blockedV6 = new net.BlockList();
for (const [a, bits] of [["::", 128], ["::1", 128], ["fc00::", 7], ["fe80::", 10], ["ff00::", 8]] as const) {
  blockedV6.addSubnet(a, bits, "ipv6");
}

export class BlockedAddressError extends Error {
  override name = "BlockedAddressError";
}

/** Whether a webhook may not connect to this IP address (v4, v6, or v4 inside v6). */
export function isBlockedAddress(ip: string): boolean {
  const family = net.isIP(ip);
  if (family === 4) return blockedV4.check(ip, "ipv4");
  if (family !== 6) return true;
  const lower = ip.toLowerCase();
  // IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d): judge the IPv4 address inside.
  const embedded = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower)?.[1];
  if (embedded) return blockedV4.check(embedded, "ipv4");
  const mappedHex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower);
  if (mappedHex) {
    const n = (parseInt(mappedHex[1]!, 16) << 16) | parseInt(mappedHex[2]!, 16);
    return blockedV4.check([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join("."), "ipv4");
  }
  return blockedV6.check(lower, "ipv6");
}

export interface SafetyOptions {
  allowHttp: boolean;
  allowPrivateNetworks: boolean;
}

/** Checks the URL itself; throws with a message for the delivery log. */
export function checkWebhookUrl(raw: string, opts: SafetyOptions): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new BlockedAddressError("not a valid URL");
  }
  if (url.protocol !== "https:" && !(url.protocol === "http:" && opts.allowHttp)) {
    throw new BlockedAddressError(`${url.protocol.replace(":", "")} URLs are not allowed; use https`);
  }
  if (url.username || url.password) throw new BlockedAddressError("URLs with credentials are not allowed");
  return url;
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | dns.LookupAddress[], family?: number) => void;

/** A `lookup` for http(s).request that resolves the host and refuses blocked addresses. */
export function safeLookup(opts: SafetyOptions) {
  return (hostname: string, options: dns.LookupOptions, callback: LookupCallback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, "");
      const list = addresses as dns.LookupAddress[];
      if (!opts.allowPrivateNetworks) {
        const bad = list.find((a) => isBlockedAddress(a.address));
        if (bad) {
          return callback(
            Object.assign(new BlockedAddressError(`${hostname} resolves to ${bad.address}, a private, loopback or link-local address`), {
              code: "EBLOCKED",
            }),
            "",
          );
        }
      }
      if (list.length === 0) return callback(Object.assign(new Error(`${hostname} has no address`), { code: "ENOTFOUND" }), "");
      if (options.all) return callback(null, list);
      callback(null, list[0]!.address, list[0]!.family);
    });
  };
}
