// Types of the public API of tether-client (hand-written; the code is plain ES modules).

export type Status = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'restarting' | 'error';

/** An environment as the REST API shows it. */
export interface Environment {
  id: string;
  name: string;
  provider: string;
  owner: string;
  config: Record<string, unknown>;
  desiredState: 'running' | 'stopped';
  status: Status;
  runtime: { connected: boolean };
  resourceId?: string | null;
  workspacePath?: string | null;
  lastError: string | null;
  restarts?: number;
  restartPolicy?: 'never' | 'on-failure' | 'always';
  idleStopSecs?: number | null;
  stopReason?: 'user' | 'idle' | null;
  createdAt?: string;
  updatedAt?: string;
  [field: string]: unknown;
}

/** One host of a cluster as `GET /api/v1/cluster` shows it (docs/rest.md). */
export interface ClusterHost {
  id: string;
  publicUrl: string;
  /** Whether it is the host that answered. */
  self: boolean;
  load: number;
  environments: string[];
  lastSeen: string;
  /** How many removals it has pending; null when unknown (an older host). */
  pendingRemovals: number | null;
  /** How many runtimes of the environments it runs are connected to it; null when unknown (an older host). */
  runtimesConnected: number | null;
  templatesDigest: string | null;
  templatesMatch: boolean | null;
  templateCount: number | null;
  templateNames: string[] | null;
  /** SHA-256 of its loaded providers (components, grants, operator config keys); null when unknown. */
  providersDigest: string | null;
  /** Whether its providers are the answering host's; null when unknown. */
  providersMatch: boolean | null;
  providerCount: number | null;
  providerNames: string[] | null;
  /** SHA-256 of its `[tenancy]` limits (defaults and every user's override); null when unknown. */
  tenancyDigest: string | null;
  /** Whether its `[tenancy]` limits are the answering host's; null when unknown. */
  tenancyMatch: boolean | null;
  /** How many users have an override of their own; null when unknown. */
  tenancyUserCount: number | null;
  /** Those users, sorted: the first 64; null when unknown. */
  tenancyUsers: string[] | null;
}

/** `GET /api/v1/cluster` (docs/rest.md, docs/cluster.md). */
export interface ClusterView {
  hostId: string;
  connected: boolean;
  leaseTtlSecs: number;
  hosts: ClusterHost[];
  conflicts: { environmentId: string; field: string; lost: unknown; kept: unknown; at: string }[];
}

/** A deleted environment whose resource the host still tries to remove (docs/rest.md). */
export interface Removal {
  environmentId: string;
  name: string;
  provider: string;
  owner: string;
  resourceId: string | null;
  attempts: number;
  lastError: string;
  failedAt: string;
  nextAttemptAt: string;
  inFlight: boolean;
}

export interface LogLine {
  ts: string;
  level: 'INFO' | 'WARN' | 'ERROR';
  source: 'provider' | 'process' | 'host';
  message: string;
  stream?: 'stdout' | 'stderr';
  pid?: number;
}

export type TicketTarget =
  | { environment: string; thread?: string }
  | { template: string; thread?: string; workspace?: string }
  | { events: true };

export class TetherError extends Error {
  constructor(code: string, message: string, details?: { status?: number; closeCode?: number; cause?: unknown });
  /** The server's error code (`not_found`, `unauthorized`, …) or the client's own. */
  code: string;
  /** HTTP status, when the server answered. */
  status?: number;
  /** WebSocket close code, when a socket ended. */
  closeCode?: number;
}

export interface ReconnectOptions {
  minDelayMs?: number;
  maxDelayMs?: number;
  maxAttempts?: number;
  connectTimeoutMs?: number;
}

export interface CloseEvent {
  code: number | null;
  reason: string;
  error: TetherError | null;
}

export const FINAL_CLOSE_CODES: Map<number, string>;

declare class Emitter {
  on(type: string, listener: (value: any) => void): () => void;
  once(type: string): Promise<any>;
}

export class ReconnectingSocket extends Emitter {
  readonly closed: boolean;
  close(code?: number, reason?: string): void;
  drop(): void;
  on(type: 'open', listener: (value: {}) => void): () => void;
  on(type: 'reconnecting', listener: (value: { attempt: number; delayMs: number; code: number | null; reason: string }) => void): () => void;
  on(type: 'close', listener: (value: CloseEvent) => void): () => void;
  on(type: string, listener: (value: any) => void): () => void;
}

export class AppConnection extends ReconnectingSocket {
  environmentId: string | undefined;
  readonly session: string;
  readonly lastSeq: number;
  readonly pending: number;
  send(message: { type: string; [field: string]: unknown }): void;
  request(
    message: { type: string; requestId?: unknown; [field: string]: unknown },
    options?: { timeoutMs?: number; onOutput?: (frame: any) => void },
  ): Promise<any>;
  exec(command: string[], options?: { timeoutMs?: number }): Promise<{ code: number | null; stdout: string; stderr: string; error?: string }>;
  on(type: 'message', listener: (message: any) => void): () => void;
  on(type: 'status', listener: (status: { environmentId: string; status: Status; desiredState: string; runtime: { connected: boolean }; lastError: string | null }) => void): () => void;
  on(type: 'resumed', listener: (value: { reset: boolean; resent: number }) => void): () => void;
  on(type: 'lost', listener: (value: { from: number; to: number; count: number }) => void): () => void;
  on(type: string, listener: (value: any) => void): () => void;
}

export type EventFrame =
  | { type: 'snapshot'; resync: boolean; environments: Environment[] }
  | { type: 'environmentCreated' | 'environmentChanged'; environment: Environment }
  | {
      type: 'environmentStatus';
      environmentId: string;
      name: string;
      provider: string;
      owner: string;
      status: Status;
      desiredState: 'running' | 'stopped';
      runtime: { connected: boolean };
      lastError: string | null;
    }
  | { type: 'environmentDeleted'; environmentId: string; name: string; owner: string; reason: 'deleted' | 'moved' };

export class EnvironmentWatch extends ReconnectingSocket {
  environments: Map<string, Environment>;
  on(type: 'frame', listener: (frame: EventFrame) => void): () => void;
  on(type: 'update', listener: (environments: Map<string, Environment>) => void): () => void;
  on(type: string, listener: (value: any) => void): () => void;
}

export interface ClientOptions {
  url: string;
  token?: string;
  tickets?: boolean;
  getTicket?: (target: TicketTarget) => Promise<string>;
  fetch?: typeof fetch;
  WebSocket?: typeof WebSocket;
  /** How long a REST call may take before it fails with `timeout` (default 30000; `0`: no limit). */
  timeoutMs?: number;
}

export class TetherClient {
  constructor(options: ClientOptions);
  readonly url: string;
  token?: string;
  /** The default deadline of a REST call in ms (`0`: none). */
  timeoutMs: number;
  call(
    method: string,
    path: string,
    options?: { body?: unknown; query?: Record<string, unknown>; signal?: AbortSignal; raw?: boolean; headers?: Record<string, string>; timeoutMs?: number },
  ): Promise<any>;

  listEnvironments(filter?: { owner?: string }): Promise<Environment[]>;
  createEnvironment(spec: {
    name: string;
    provider: string;
    config?: Record<string, unknown>;
    start?: boolean;
    restartPolicy?: 'never' | 'on-failure' | 'always';
    idleStopSecs?: number;
    owner?: string;
  }): Promise<Environment>;
  getEnvironment(id: string): Promise<Environment>;
  updateEnvironment(
    id: string,
    patch: { config?: Record<string, unknown>; restartPolicy?: 'never' | 'on-failure' | 'always'; idleStopSecs?: number },
  ): Promise<Environment>;
  deleteEnvironment(id: string, options?: { force?: boolean }): Promise<void>;
  startEnvironment(id: string): Promise<Environment>;
  stopEnvironment(id: string): Promise<Environment>;
  restartEnvironment(id: string): Promise<Environment>;
  logs(id: string, options?: { tail?: number; since?: string }): Promise<LogLine[]>;
  followLogs(id: string, options?: { tail?: number; since?: string; signal?: AbortSignal }): AsyncGenerator<LogLine>;

  listTokens(filter?: { user?: string }): Promise<any[]>;
  createToken(spec: { user: string; scopes?: string[]; environments?: string[]; expiresInSecs?: number; note?: string }): Promise<any>;
  revokeToken(id: string): Promise<any>;
  rotateAdminToken(): Promise<{ token: string }>;
  whoami(): Promise<{ user: string; tokenId: string; scopes: string[]; environments: string[] | null }>;
  createTicket(target: TicketTarget): Promise<{ ticket: string; expiresInSecs: number; [field: string]: unknown }>;
  listTemplates(): Promise<any[]>;
  listProviders(): Promise<any[]>;
  getProvider(name: string): Promise<any>;
  installProvider(name: string, wasm: Uint8Array | ArrayBuffer): Promise<any>;
  audit(filter?: { since?: string; limit?: number; owner?: string }): Promise<any[]>;
  configStatus(): Promise<any>;
  cluster(): Promise<ClusterView>;
  listRemovals(): Promise<Removal[]>;
  retryRemoval(id: string): Promise<Removal>;
  dropRemoval(id: string): Promise<Removal>;
  /** `/healthz`: `status` for any caller; the other fields only with an admin's token. */
  health(): Promise<{
    status: 'ok' | 'degraded';
    /** Admin only: why it is degraded. */
    reasons?: string[];
    /** Admin only: a storage failure in force, or null (docs/rest.md, `/healthz`). */
    storage?: null | { problem: 'full' | 'readOnly' | 'failing'; path: string; error: string; since: string };
    /** Admin only: deleted environments' resources the host still tries to remove. */
    pendingRemovals?: number;
  }>;

  connectApp(id: string, options?: { thread?: string; start?: boolean; session?: string; maxPending?: number } & ReconnectOptions): AppConnection;
  connectTemplate(
    template: string,
    options?: { thread?: string; workspace?: string; start?: boolean; session?: string; maxPending?: number } & ReconnectOptions,
  ): AppConnection;
  watchEnvironments(options?: ReconnectOptions): EnvironmentWatch;
}
