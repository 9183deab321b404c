"""``ciphervec serve | keys | load | bench`` for humans."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..infra.settings import Settings
from . import load_cli


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "store_uri": getattr(args, "store", None),
        "keys_uri": getattr(args, "keys", None),
    }
    if getattr(args, "no_auth", False):
        overrides["auth"] = False
    if getattr(args, "max_body_mb", None):
        overrides["max_body_bytes"] = int(args.max_body_mb * (1 << 20))
    if getattr(args, "train_threshold", None):
        overrides["train_threshold"] = args.train_threshold
    return Settings.from_env(**overrides)


def serve(args: argparse.Namespace) -> int:
    # Before the handlers are imported: powertools reads its level when the Logger is made.
    settings = _settings(args)
    level = settings.log_level.upper()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", level)
    logging.basicConfig(level=level)
    logging.getLogger("ciphervec").propagate = False  # powertools prints it already, as JSON

    from ..infra.wiring import configure

    if args.workers > 1 and settings.store_uri.startswith("memory://"):
        print(
            "--workers needs a store the processes share (file:// or s3://), not memory://", file=sys.stderr
        )
        return 2
    c = configure(settings)
    sweep_temps = getattr(c.service.store, "sweep_temps", None)
    if sweep_temps is not None and (removed := sweep_temps()):  # what killed processes left
        print(f"removed {removed} temporary files left by an earlier process")
    for tenant, name, mode, kind in c.service.orphaned_jobs():  # queued or running when a process died
        what = "training" if kind == "train" else "re-encryption"
        if mode == "kms":
            c.trainer.enqueue(tenant, name, None, kind=kind)
            print(f"{what} of index {name!r} (tenant {tenant!r}) was interrupted: queued again")
        else:
            print(
                f"{what} of index {name!r} (tenant {tenant!r}) was interrupted: it is queued "
                "again by the next request that gives its key"
            )
    from .snapstart import warm

    warm()  # what the first request would load (faiss, validators, AWS clients), loaded now
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    base = f"http://{host}:{port}"
    print(f"ciphervec listening on {base}  (store {settings.store_uri}, keys {settings.keys_uri})")
    print(f"API docs: {base}/v1/docs  (OpenAPI: {base}/v1/openapi.json)")
    if not settings.auth:
        print("WARNING: authentication is OFF (--no-auth). Development only.")
    elif not c.auth.store.list() and not settings.root_key:
        api_key, _ = c.auth.create_key("default", "admin", label="first admin key")
        print("\nThe key store was empty, so an admin API key was created (shown once, keep it):")
        print(f"\n    {api_key}\n")
        print("Try it:")
        print(f"    curl -s {base}/v1/health")
        print(
            f"    curl -s -X POST {base}/v1/indexes/create -H 'X-API-Key: {api_key}' "
            "-H 'Content-Type: application/json' "
            f'-d \'{{"index_name": "demo", "index_key": "{"ab" * 32}", "dimension": 4}}\''
        )
        print(f"\nPython: cyborgdb.Client('{base}', '{api_key}')\n")
    else:
        print("API keys exist already; mint another with: ciphervec keys create --role admin")
    sys.stdout.flush()
    if args.workers > 1:
        return _serve_workers(sock, settings, args.workers, args.port_file)
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    try:
        _run(sock, settings)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio turns Nagle off only on sockets that say they are TCP;
    # with proto 0 a response's headers and body wait ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run(sock: socket.socket, settings: Settings) -> None:
    from ..infra.server import serve
    from ..infra.wiring import container
    from .api import lambda_handler

    serve(sock, lambda_handler, settings, lambda: container().metrics.exposition())


def _serve_workers(sock: socket.socket, settings: Settings, workers: int, port_file: str | None) -> int:
    """Fork ``workers`` processes that serve the one listening socket, each with its own
    container, so each holds its own decrypted copy of the indexes it serves. They stay
    consistent the way several processes on one store do: every request re-reads the head."""
    from ..infra.wiring import configure

    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: nothing of the parent's container is used past here
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                configure(settings)
                _run(sock, settings)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    if port_file:  # every worker is there: connections wait in the backlog until one accepts
        Path(port_file).write_text(str(sock.getsockname()[1]))

    def stop(signum: int, frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        os.waitpid(child, 0)
    sock.close()
    return 0


def keys(args: argparse.Namespace) -> int:
    from ..infra.keystore import Authenticator, open_keystore

    settings = _settings(args)
    auth = Authenticator(open_keystore(settings.keys_uri))
    if args.keys_cmd == "create":
        perms = args.permissions.split(",") if args.permissions else None
        role = "user" if args.index else args.role
        if role == "user" and not perms:
            perms = ["read", "write"] if args.role != "read" else ["read"]
        api_key, record = auth.create_key(
            args.tenant, role, index_name=args.index, permissions=perms, label=args.label or ""
        )
        print(api_key)
        print(f"key id {record.key_id}, tenant {record.tenant}, role {record.role}", file=sys.stderr)
    elif args.keys_cmd == "list":
        for r in auth.store.list(args.tenant):
            row = {
                "key_id": r.key_id,
                "tenant": r.tenant,
                "role": r.role,
                "index_name": r.index_name,
                "permissions": r.permissions,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created_at)),
                "revoked": bool(r.revoked_at),
                "label": r.label,
            }
            print(json.dumps(row))
    elif args.keys_cmd == "revoke":
        if auth.revoke(args.key_id) is None:
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


def bench(args: argparse.Namespace) -> int:
    """Run ``bench/run.py`` of a source checkout (the benchmark is not shipped in the wheel)."""
    script = Path(args.repo).resolve() / "bench" / "run.py"
    if not script.exists():
        print(f"no {script}: run `ciphervec bench` from a ciphervec source checkout", file=sys.stderr)
        return 2
    extra = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    return subprocess.call([sys.executable, str(script), *extra])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ciphervec", description="Encrypted vector index (CyborgDB REST v1)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the API locally over HTTP")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    s.add_argument("--store", help="memory://, file://PATH (default ./.ciphervec/data) or s3://BUCKET/PREFIX")
    s.add_argument("--keys", help="file://PATH (default ./.ciphervec/keys.json) or dynamodb://TABLE")
    s.add_argument("--no-auth", action="store_true", help="accept requests without API keys (development)")
    s.add_argument("--max-body-mb", type=float, help="largest request body accepted (default 256)")
    s.add_argument("--train-threshold", type=int, help="vectors before automatic training (65536)")
    s.add_argument("--port-file", help="write the bound port here once listening")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the port (default 1: threads over one copy; each extra process "
        "holds its own decrypted copy of every index it serves)",
    )
    s.set_defaults(func=serve)
    k = sub.add_parser("keys", help="manage API keys")
    k.add_argument("--keys", help="key store URI (default from CIPHERVEC_KEYS)")
    ks = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create", help="mint a key and print it once")
    kc.add_argument("--tenant", default="default")
    kc.add_argument("--role", choices=["admin", "write", "read"], default="admin")
    kc.add_argument("--index", help="limit the key to one index")
    kc.add_argument("--permissions", help="with --index: read,write")
    kc.add_argument("--label", help="a note stored with the key")
    kl = ks.add_parser("list", help="list keys (never their secrets)")
    kl.add_argument("--tenant")
    kr = ks.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    k.set_defaults(func=keys)
    load_cli.add_parser(sub)
    b = sub.add_parser("bench", help="side-by-side benchmark (source checkout; see bench/run.py --help)")
    b.add_argument("--repo", default=".", help="the source checkout (default: here)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to bench/run.py")
    b.set_defaults(func=bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
