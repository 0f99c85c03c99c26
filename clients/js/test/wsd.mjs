// Starts real wsd processes for the tests: bin/wsd (built by `make
// test-js`, or WSD_BIN) on free loopback ports, stopped by PID; and a
// redis-server of the test's own for the Redis broker (startRedis).
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const wsdBin = process.env.WSD_BIN ?? resolve(here, "../../../bin/wsd");
export const redisBin = process.env.REDIS_SERVER ?? "/usr/bin/redis-server";

export const secret = "a test secret of at least thirty-two bytes";
export const apiKey = "test-key";

/** freePort returns a loopback port nothing listens on now. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** token signs an HS256 JWT for sub with extra claims. */
export function token(sub, claims = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, ...claims })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/**
 * startWsd runs wsd with the given extra flags (and port, to restart on
 * the same one) and resolves once /readyz answers 200.
 */
export async function startWsd({ args = [], port, tokens = false } = {}) {
  if (!existsSync(wsdBin)) throw new Error(`${wsdBin} is missing: run make test-js (or go build -o bin/wsd ./cmd/wsd)`);
  // A free port can be taken by another process (the test files run in
  // parallel) between freePort and wsd's bind: then try other ports (or,
  // for a restart on a given port, the same one again a little later).
  for (let attempt = 1; ; attempt++) {
    try {
      return await launch({ args, port: port ?? (await freePort()), admin: await freePort(), tokens });
    } catch (err) {
      if (!err.addressInUse || attempt === 5) throw err;
      if (port !== undefined) await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function launch({ args, port, admin, tokens }) {
  const flags = ["--listen", `127.0.0.1:${port}`, "--admin", `127.0.0.1:${admin}`, "--api-key", apiKey, "--loops", "2", "--log-level", "warn", ...args];
  if (tokens) {
    const dir = mkdtempSync(join(tmpdir(), "wsd-js-"));
    writeFileSync(join(dir, "secret"), secret);
    flags.push("--jwt-secret-file", join(dir, "secret"));
  }
  const proc = spawn(wsdBin, flags, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  proc.stderr.on("data", (d) => (log += d));
  const exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
  const deadline = Date.now() + 15000;
  for (;;) {
    if (proc.exitCode !== null) {
      if (!proc.stderr.closed) await new Promise((r) => proc.stderr.once("close", r)); // all of stderr is in log
      throw Object.assign(new Error(`wsd exited at start: ${log}`), { addressInUse: log.includes("address already in use") });
    }
    try {
      const r = await fetch(`http://127.0.0.1:${admin}/readyz`);
      if (r.status === 200) break;
    } catch {}
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`wsd not ready after 15 s: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    adminURL: `http://127.0.0.1:${admin}`,
    pid: proc.pid,
    log: () => log,
    /** api calls the HTTP API: POST with a body, GET without. */
    async api(path, body) {
      const r = await fetch(`http://127.0.0.1:${admin}${path}`, {
        method: body === undefined ? "GET" : "POST",
        headers: { Authorization: `apikey ${apiKey}` },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const json = await r.json();
      if (r.status !== 200) throw new Error(`${path}: ${r.status} ${JSON.stringify(json)}`);
      return json;
    },
    /**
     * signal sends sig; for SIGSTOP and SIGCONT it resolves once the process
     * is stopped (resp. running again), as /proc says: a signal is delivered
     * asynchronously, and a server that answers one more request before it
     * stops would make a timeout test pass or fail by chance.
     */
    async signal(sig) {
      process.kill(proc.pid, sig);
      if (sig !== "SIGSTOP" && sig !== "SIGCONT") return;
      const want = sig === "SIGSTOP";
      for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
        // The state is the field after the command's closing parenthesis.
        const stat = readFileSync(`/proc/${proc.pid}/stat`, "utf8");
        const stopped = stat.slice(stat.lastIndexOf(")") + 2)[0] === "T";
        if (stopped === want) return;
        await new Promise((r) => setTimeout(r, 5));
      }
      throw new Error(`wsd (pid ${proc.pid}) did not ${want ? "stop" : "continue"} within 5 s of ${sig}`);
    },
    /** stop sends SIGTERM (a drain) and waits for the exit; SIGKILL after 10 s. */
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 10000);
      const res = await exited;
      clearTimeout(t);
      return res;
    },
  };
}

/** ping sends PING to a Redis at port and resolves with its first line, or rejects after 1 s. */
function ping(port) {
  return new Promise((res, rej) => {
    const s = connect({ host: "127.0.0.1", port });
    let got = "";
    const done = (err) => {
      clearTimeout(t);
      s.destroy();
      err ? rej(err) : res(got.slice(0, got.indexOf("\r\n")));
    };
    const t = setTimeout(() => done(new Error("no answer to PING within 1 s")), 1000);
    s.once("error", done);
    s.once("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      got += d;
      if (got.includes("\r\n")) done();
    });
  });
}

/**
 * startRedis runs redis-server (redisBin) on a free 127.0.0.1 port, with no
 * persistence, in a directory of its own, and resolves once it answers
 * PING. stop kills it by PID (SIGKILL: nothing to save) and removes the
 * directory. Callers skip when redisBin is missing (Debian: apt-get install
 * redis-server).
 */
export async function startRedis() {
  if (!existsSync(redisBin)) throw new Error(`${redisBin} is missing: apt-get install redis-server`);
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "wsd-redis-"));
  const flags = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--protected-mode", "yes"];
  const proc = spawn(redisBin, flags, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  const exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      process.kill(proc.pid, "SIGKILL");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // A port taken between freePort and the bind makes redis-server exit;
  // its log says so.
  const deadline = Date.now() + 10000;
  for (;;) {
    if (proc.exitCode !== null) {
      await stop();
      throw new Error(`redis-server exited at start: ${log}`);
    }
    let answer = "";
    try {
      answer = await ping(port);
      if (answer === "+PONG") break;
    } catch {}
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`redis-server on 127.0.0.1:${port} did not answer PING within 10 s (${answer || "no answer"}): ${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, addr: `127.0.0.1:${port}`, pid: proc.pid, log: () => log, stop };
}

/** next resolves with the next event `name` of an emitter, or rejects after ms. */
export function next(emitter, name, ms = 10000) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      off();
      rej(new Error(`no ${name} event within ${ms} ms`));
    }, ms);
    const off = emitter.on(name, (ev) => {
      clearTimeout(t);
      off();
      res(ev);
    });
  });
}

/** collect gathers a subscription's publications until it has n. */
export function collect(sub, n, ms = 10000) {
  const got = [];
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      off();
      rej(new Error(`${got.length} of ${n} publications within ${ms} ms`));
    }, ms);
    const off = sub.on("publication", (p) => {
      got.push(p);
      if (got.length === n) {
        clearTimeout(t);
        off();
        res(got);
      }
    });
  });
}
