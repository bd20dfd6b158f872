// The platform's own gRPC services, called from the browser as gRPC-Web (tonic-web on the same
// port as gRPC): the same handlers, the same token checks and the same answers as for the CLI.
// Every call carries the in-memory access token; a call refused as UNAUTHENTICATED is tried once
// more after a refresh.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { accessToken, refresh, sessionLost } from "./auth";
import { ChannelService, ThingService, UserService } from "./gen/sipmba/v1/objects_pb";
import { ControlService } from "./gen/sipmba/v1/control_pb";
import { PresenceService, RuleService, TelemetryService } from "./gen/sipmba/v1/processing_pb";
import { AccountService } from "./gen/sipmba/v1/sso_pb";

const bearer: Interceptor = (next) => async (request) => {
  const token = await accessToken();
  if (token) request.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(request);
  } catch (e) {
    const error = ConnectError.from(e);
    if (error.code !== Code.Unauthenticated || request.stream) throw error;
    // Expired or revoked: one refresh, one more try; a refused refresh ends the session.
    try {
      await refresh();
    } catch {
      sessionLost();
      throw error;
    }
    request.header.set("authorization", `Bearer ${await accessToken()}`);
    return await next(request);
  }
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  useBinaryFormat: true,
  interceptors: [bearer],
});

export const users = createClient(UserService, transport);
export const things = createClient(ThingService, transport);
export const channels = createClient(ChannelService, transport);
export const control = createClient(ControlService, transport);
export const telemetry = createClient(TelemetryService, transport);
export const presence = createClient(PresenceService, transport);
export const rules = createClient(RuleService, transport);
export const accounts = createClient(AccountService, transport);

/** What a failed call says, for a person: the service's own message. */
export function describe(e: unknown): string {
  if (e instanceof ConnectError) return e.rawMessage || Code[e.code] || "the call failed";
  return e instanceof Error ? e.message : String(e);
}

/** True when the call was cut short because the page no longer wants it. */
export function aborted(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.Canceled;
}
