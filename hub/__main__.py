"""The hub's command line: ``python -m hub [serve|dispatch|migrate|load-town|import-geojson|
wait-ready|mqtt-accounts|create-user|create-token|revoke-token]``.

Settings are built once here from ``HUB_*`` variables and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import log as hub_log
from core.db import connect, migrate
from core.errors import HubError, InvalidInput
from core.settings import Settings

if TYPE_CHECKING:
    from hub.dispatch_child import DispatchChild

RULES_FILE = Path(__file__).resolve().parent.parent / "simulators" / "data" / "rules.toml"


async def _migrate(settings: Settings) -> None:
    conn = await connect(settings.database_url)
    try:
        applied = await migrate(conn)
        print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    finally:
        await conn.close()


async def _load_town(settings: Settings, path: Path, if_empty: bool, rules: Path) -> None:
    from hub import town

    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        if if_empty and await conn.fetchval("SELECT count(*) FROM grids"):
            print("town already loaded; keeping it")
            await _town_mqtt_accounts(conn, settings)  # a town loaded before accounts existed
            return
        from hub.inspection_registry import load_registry

        doc = town.read_town(path)
        counts = await town.load_town(conn, doc)
        counts["rules"] = await town.load_rules(conn, town.read_rules(rules))
        await load_registry(conn, doc)  # the registries of the town loaded, not the demo's
        print("loaded " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        await _town_mqtt_accounts(conn, settings)
    finally:
        await conn.close()


async def _town_mqtt_accounts(conn: Any, settings: Settings) -> None:
    """MQTT accounts for every device and unit of the town that has none. Their passwords
    are random and kept only hashed: the simulators publish through a gateway account, and
    a real device gets its password from ``mqtt-accounts rotate`` (or the API)."""
    from hub import mqtt_accounts

    made = {k: await mqtt_accounts.provision_missing(conn, k) for k in ("device", "unit")}
    for kind, (_, skipped) in made.items():
        if skipped:
            print(f"no MQTT account for {len(skipped)} {kind} ids that cannot be usernames "
                  f"(':' in the id): {', '.join(skipped[:5])}")
    if any(n for n, _ in made.values()):
        print(f"MQTT accounts: {made['device'][0]} devices, {made['unit'][0]} units")
        await _mqtt_sync_quietly(conn, settings)


async def _mqtt_sync_quietly(conn: Any, settings: Settings) -> None:
    from hub import mqtt_accounts

    files = mqtt_accounts.BrokerFiles.from_settings(settings)
    if files is None:
        return  # the set-up renders the files (hubctl) or the operator runs `sync`
    try:
        print((await mqtt_accounts.sync(conn, files)).detail)
    except HubError as e:
        print(f"MQTT broker files not written: {e.message}", file=sys.stderr)


async def _mqtt_accounts(settings: Settings, args: argparse.Namespace) -> int:
    from hub import audit, mqtt_accounts

    files = mqtt_accounts.BrokerFiles.from_settings(settings)
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        if args.action == "setup":
            for spec in args.account:
                kind, _, rest = spec.partition(":")
                principal, _, path = rest.partition(":")
                if kind not in ("gateway", "fleet", "service") or not principal or not path:
                    raise InvalidInput(f"--account {spec!r}: want gateway|fleet|service:NAME:FILE",
                                       code="mqtt.invalid_account")
                password = Path(path).read_text(encoding="utf-8").strip()
                if not password:
                    raise InvalidInput(f"{path} is empty", code="mqtt.invalid_account")
                await mqtt_accounts.set_password(conn, principal, kind, password)
                await audit.record(conn, "mqtt_account.set", audit.cli_actor(),
                                   target=principal, detail={"kind": kind})
        elif args.action == "provision":
            creds = await mqtt_accounts.provision(conn, args.principal, args.kind)
            await audit.record(conn, "mqtt_account.provisioned", audit.cli_actor(),
                               target=args.principal, detail={"kind": args.kind})
            print(f"username: {creds.principal}\npassword: {creds.password}")
        elif args.action == "rotate":
            creds = await mqtt_accounts.rotate(conn, args.principal)
            await audit.record(conn, "mqtt_account.rotated", audit.cli_actor(),
                               target=args.principal)
            print(f"username: {creds.principal}\npassword: {creds.password}")
        elif args.action == "revoke":
            await mqtt_accounts.revoke(conn, args.principal)
            await audit.record(conn, "mqtt_account.revoked", audit.cli_actor(),
                               target=args.principal)
            print(f"revoked {args.principal}")
        elif args.action == "list":
            for a in await mqtt_accounts.list_accounts(conn):
                print(f"{a['principal']}\t{a['kind']}\t{'active' if a['active'] else 'revoked'}")
            return 0
        result = await mqtt_accounts.sync(conn, files)
        print(f"MQTT accounts: {result.accounts} active; {result.detail}",
              file=sys.stderr if args.action in ("provision", "rotate") else sys.stdout)
        return 0
    finally:
        await conn.close()


async def _import_geojson(settings: Settings, grids: Path, roads: Path, name: str) -> None:
    from hub import town
    from hub.town_geojson import town_from_geojson

    try:
        doc = town_from_geojson(json.loads(grids.read_text(encoding="utf-8")),
                                json.loads(roads.read_text(encoding="utf-8")), name)
    except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
        raise InvalidInput(str(e), code="town.invalid_geojson") from e
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        counts = await town.load_town(conn, doc)
        print("imported " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    finally:
        await conn.close()


def _read_password(path: Path | None) -> str:
    """From a file (first line) or standard input: never from the command line, where
    other users of the machine could read it in the process list."""
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        if sys.stdin.isatty():
            import getpass

            text = getpass.getpass("password: ")
        else:
            text = sys.stdin.readline()
    return text.splitlines()[0] if text.strip() else ""


async def _create_user(settings: Settings, name: str, role: str, display_name: str,
                       password: str, update: bool) -> None:
    from hub import auth

    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        user = await auth.create_user(conn, name, password, role, display_name=display_name,
                                      update=update)
        print(f"user {user['username']} ({user['role']}) {'set' if update else 'created'}")
    finally:
        await conn.close()


async def _create_token(settings: Settings, name: str, role: str, unit: str | None,
                        token_file: Path | None) -> None:
    from hub import auth

    given = None
    if token_file is not None:
        given = token_file.read_text(encoding="utf-8").strip()
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        token = await auth.create_token(conn, name, role, unit_id=unit, token=given)
    finally:
        await conn.close()
    if given is None:
        print(token)  # the only time it is shown; only its hash is stored
    else:
        print(f"token {name} ({role}) registered from {token_file}", file=sys.stderr)


async def _revoke_token(settings: Settings, name: str) -> None:
    from hub import auth

    conn = await connect(settings.database_url)
    try:
        n = await auth.revoke_tokens(conn, name)
        print(f"revoked {n} token(s) named {name}")
    finally:
        await conn.close()


def _early_dispatch(settings: Settings, roles: frozenset[str]) -> DispatchChild | None:
    """The dispatch process's supervisor with its first child already starting, when this
    hub runs dispatch in a process of its own (hub/dispatch_child.py); else None."""
    from hub import dispatch_child

    if not dispatch_child.wanted(settings, roles):
        return None
    child = dispatch_child.DispatchChild(settings)
    child.spawn_early()
    return child


def _serve(settings: Settings, roles: frozenset[str],
           dispatch_child: DispatchChild | None) -> None:
    import uvicorn

    from hub.app import create_app

    uvicorn.run(create_app(settings, roles, dispatch_child), host=settings.http_host,
                port=settings.http_port,
                ws="websockets-sansio", ws_per_message_deflate=False, log_config=None,
                ws_max_size=settings.ws_max_message_bytes,
                lifespan="on")


def _wait_ready(settings: Settings, timeout: float) -> int:
    url = f"http://127.0.0.1:{settings.http_port}/api/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return 0
        except OSError:
            pass
        time.sleep(0.2)
    print(f"hub not ready at {url} after {timeout:.0f}s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    p_serve = sub.add_parser("serve", help="run the hub (all roles by default)")
    p_serve.add_argument("--roles", default="ingest,dispatch,web",
                         help="comma-separated subset of ingest,dispatch,web")
    p_dispatch = sub.add_parser(
        "dispatch", help="run the dispatch role alone, without an HTTP port (serve runs it "
                         "so, as its child, beside its other roles)")
    # Set by the hub process that starts it as its child (hub/dispatch_child.py).
    p_dispatch.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    p_dispatch.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="apply database migrations")
    p_town = sub.add_parser("load-town", help="load a gridhub-town/1 JSON file and rules")
    p_town.add_argument("file", nargs="?", type=Path)
    p_town.add_argument("--rules", type=Path, default=RULES_FILE)
    p_town.add_argument("--if-empty", action="store_true", help="skip if a town is loaded")
    p_geo = sub.add_parser("import-geojson", help="import a real town's grids and roads")
    p_geo.add_argument("grids", type=Path)
    p_geo.add_argument("roads", type=Path)
    p_geo.add_argument("--name", required=True)
    p_wait = sub.add_parser("wait-ready", help="wait until the hub answers /api/health")
    p_wait.add_argument("--timeout", type=float, default=60)
    p_mqtt = sub.add_parser(
        "mqtt-accounts", help="MQTT accounts: render the broker's files, provision, revoke",
        description="Every action but list renders Mosquitto's password and ACL files "
                    "(HUB_MQTT_PASSWORD_FILE, HUB_MQTT_ACL_FILE) and reloads the broker "
                    "(HUB_MQTT_BROKER_PID_FILE).")
    mqtt_sub = p_mqtt.add_subparsers(dest="action", required=True)
    mqtt_sub.add_parser("sync", help="render the files from the database and reload")
    p_setup = mqtt_sub.add_parser("setup", help="create or update gateway/service accounts "
                                  "with the passwords in FILEs (hubctl's secrets), then sync")
    p_setup.add_argument("--account", action="append", default=[], metavar="KIND:NAME:FILE",
                         help="gateway|fleet|service:NAME:password file; repeatable")
    p_prov = mqtt_sub.add_parser("provision", help="an account for a registered device or "
                                 "unit; prints its password once")
    p_prov.add_argument("kind", choices=("device", "unit"))
    p_prov.add_argument("principal")
    p_rot = mqtt_sub.add_parser("rotate", help="a new password; prints it once")
    p_rot.add_argument("principal")
    p_rev = mqtt_sub.add_parser("revoke", help="revoke an account (refused from now on)")
    p_rev.add_argument("principal")
    mqtt_sub.add_parser("list", help="accounts, without secrets")
    p_user = sub.add_parser("create-user", help="create a user who logs in to the pages "
                            "(password from --password-file or standard input)")
    p_user.add_argument("name")
    p_user.add_argument("--role", required=True,
                        choices=["viewer", "operator", "supervisor", "admin"])
    p_user.add_argument("--display-name", default="")
    p_user.add_argument("--password-file", type=Path)
    p_user.add_argument("--update", action="store_true",
                        help="reset the password, role and name of an existing user")
    p_token = sub.add_parser("create-token", help="create an API token and print it once")
    p_token.add_argument("--name", required=True)
    p_token.add_argument("--role", required=True,
                         choices=["viewer", "operator", "supervisor", "admin", "unit",
                                  "grid_worker"])
    p_token.add_argument("--unit", help="the unit id a patrol phone's token (role unit or "
                                        "grid_worker) is for; phones normally enrol by code "
                                        "(POST /api/field/enrolments)")
    p_token.add_argument("--token-file", type=Path,
                         help="register the token in this file instead of a new one "
                              "(idempotent; the demo keeps its tokens under var/)")
    p_revoke = sub.add_parser("revoke-token", help="revoke every token with this name")
    p_revoke.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    if args.cmd == "dispatch":
        # Its settings may come from the hub process that started it, not from HUB_*.
        from hub import dispatch_process

        return dispatch_process.run_from(args.control_fd, args.parent_pid)
    hub_log.setup()
    try:
        settings = Settings()  # type: ignore[call-arg]  # database_url comes from HUB_*
    except Exception as e:
        print(f"settings: {e}", file=sys.stderr)
        return 2
    try:
        if args.cmd in (None, "serve"):
            roles = frozenset((getattr(args, "roles", None) or "ingest,dispatch,web").split(","))
            # First: it starts while this process migrates and imports the app.
            child = _early_dispatch(settings, roles)
            # Refuse to start, in one line, without a database or without TimescaleDB.
            try:
                asyncio.run(_migrate(settings))
            except BaseException:
                if child is not None:
                    child.abandon_early()  # before the error: it is the one line printed
                raise
            _serve(settings, roles, child)
        elif args.cmd == "migrate":
            asyncio.run(_migrate(settings))
        elif args.cmd == "load-town":
            asyncio.run(_load_town(settings, args.file or settings.town_file, args.if_empty,
                                   args.rules))
        elif args.cmd == "import-geojson":
            asyncio.run(_import_geojson(settings, args.grids, args.roads, args.name))
        elif args.cmd == "create-user":
            password = _read_password(args.password_file)
            asyncio.run(_create_user(settings, args.name, args.role, args.display_name,
                                     password, args.update))
        elif args.cmd == "create-token":
            asyncio.run(_create_token(settings, args.name, args.role, args.unit,
                                      args.token_file))
        elif args.cmd == "revoke-token":
            asyncio.run(_revoke_token(settings, args.name))
        elif args.cmd == "wait-ready":
            return _wait_ready(settings, args.timeout)
        elif args.cmd == "mqtt-accounts":
            return asyncio.run(_mqtt_accounts(settings, args))
    except HubError as e:
        print(f"error [{e.code}]: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
