"""The deployment files under deploy/ (docs/operations.md): the systemd unit (checked by
``systemd-analyze verify`` when it is installed, and parsed here in any case) and its
example configuration, and every Kubernetes manifest, loaded with PyYAML: the numbers
agree with the configuration each one carries (grace periods above
GracefulShutdownTimeout, probe paths served by the ready and live handlers on the
probed port, the preStop drain naming the mounted file), and every configuration
passes ``tunnel configtest``."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunnel.config import Config
from tunnel.config.scopes import effective_scope

pytestmark = pytest.mark.timeout(60)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "tunnel.service"
KUBERNETES = DEPLOY / "kubernetes"


def configtest(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunnel", "configtest", str(path)], capture_output=True, text=True, timeout=30)


# -- systemd ----------------------------------------------------------------------------------


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections: key -> every value given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{raw!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span (``45``, ``45s``, ``1min 30s``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def unit_config_file(service: dict[str, list[str]]) -> str:
    (start,) = service["ExecStart"]
    words = shlex.split(start)
    assert words[1] == "serve" and "--config" in words, start
    return words[words.index("--config") + 1]


def test_the_unit_reloads_and_stops_gracefully_with_room_above_the_grace_period():
    service = unit_sections(UNIT.read_text())["Service"]
    conf_path = unit_config_file(service)
    (reload,) = service["ExecReload"]
    assert shlex.split(reload)[1:] == ["ctl", "--config", conf_path, "graceful"]
    assert service["KillSignal"] == ["SIGWINCH"]  # systemctl stop is a graceful stop
    assert service["KillMode"] == ["mixed"]  # to the supervisor only, which tells its workers
    assert "ExecStop" not in service
    # The example configuration is what the unit serves (/etc/tunnel/tunnel.conf).
    assert conf_path == "/etc/tunnel/tunnel.conf"
    config = Config.from_file(str(DEPLOY / "tunnel.conf"))
    assert config.graceful_shutdown_timeout > 0
    assert seconds(service["TimeoutStopSec"][0]) >= config.graceful_shutdown_timeout + 10
    assert int(service["LimitNOFILE"][0]) >= 65536
    (pre,) = service["ExecStartPre"]
    assert shlex.split(pre)[1:] == ["configtest", conf_path]
    # ctl must find the PidFile and the control socket where an operator's shell does:
    # in the unit's RuntimeDirectory, not in its private /tmp.
    run_dir = "/run/" + service["RuntimeDirectory"][0]
    assert config.pid_file.startswith(run_dir + "/") and (config.control_socket or "").startswith(run_dir + "/")
    assert unit_sections(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the unit is still parsed by the test above)")
    tunnel_bin = Path(sys.executable).with_name("tunnel")
    assert tunnel_bin.exists(), tunnel_bin
    # The unit names /usr/local/bin/tunnel; verify checks that its commands exist.
    unit = tmp_path / "tunnel.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tunnel", str(tunnel_bin)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30)
    if "not been booted with systemd" in out.stderr or "Failed to initialize manager" in out.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stderr.splitlines() if "tunnel.service" in line] == []  # no warning about it


def test_the_systemd_example_configuration_passes_configtest():
    out = configtest(DEPLOY / "tunnel.conf")
    assert out.returncode == 0 and "Syntax OK" in out.stdout + out.stderr, out.stderr


# -- Kubernetes -------------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= set(doc), path
            doc["_file"] = str(path.relative_to(DEPLOY))
            docs.append(doc)
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def tunnel_deployments() -> list[dict[str, Any]]:
    return [d for d in of_kind("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["name"] == "tunnel"]


def carried_config(deployment: dict[str, Any], tmp_path: Path) -> tuple[Config, Path, str]:
    """The configuration a tunnel Deployment mounts: (parsed, written to tmp_path, the
    path the container reads it from)."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (configmap,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    text = configmap["data"][key]
    local = tmp_path / f"{deployment['metadata']['name']}.conf"
    local.write_text(text)
    return Config.from_text(text, filename=str(local)), local, path


def test_every_manifest_loads_and_there_are_both_variants():
    docs = manifests()
    kinds = {(d["_file"], d["kind"]) for d in docs}
    assert {k for _, k in kinds} >= {"Deployment", "ConfigMap", "Service"}
    assert len(tunnel_deployments()) == 2  # direct, and behind HAProxy


@pytest.mark.parametrize("index", [0, 1], ids=lambda i: ["direct", "behind-haproxy"][i])
def test_a_tunnel_deployment_agrees_with_its_configuration(index, tmp_path):
    deployment = sorted(tunnel_deployments(), key=lambda d: d["metadata"]["name"])[index]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config, local, path = carried_config(deployment, tmp_path)
    out = configtest(local)
    assert out.returncode == 0 and "Syntax OK" in out.stdout + out.stderr, out.stderr
    assert container["args"][0] == "serve" and "--graceful-term" in container["args"]  # SIGTERM is a graceful stop
    # preStop drains the instance serving that very file, then waits for the probes.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    script = command[-1]
    drain, _, pause = script.partition("&&")
    assert shlex.split(drain) == ["tunnel", "ctl", "--config", path, "drain"]
    (sleep_s,) = re.findall(r"^\s*sleep (\d+)\s*$", pause)
    readiness = container["readinessProbe"]
    # The drain must be seen: the sleep covers several readiness periods.
    assert int(sleep_s) >= 2 * readiness["periodSeconds"] * readiness.get("failureThreshold", 3)
    # Kubernetes counts the preStop inside the grace period; SIGKILL after it.
    assert config.graceful_shutdown_timeout > 0
    assert pod["terminationGracePeriodSeconds"] > int(sleep_s) + config.graceful_shutdown_timeout
    # The probes reach the handlers: a Listen port, its vhost's ready and live handlers,
    # and no PROXY header expected there (the kubelet sends none).
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {lst.port for lst in config.listeners}
    for probe, handler in (("readinessProbe", "ready"), ("livenessProbe", "live")):
        get = container[probe]["httpGet"]
        (listener,) = [lst for lst in config.listeners if lst.port == get["port"]]
        assert not listener.proxy_protocol, f"{probe} on a port that expects a PROXY header"
        scope = config.vhost_for(listener, None)[0]
        assert effective_scope(scope, get["path"]).handler == handler, (probe, get["path"])
        # ... which no ProxyPass takes first (mod_proxy's handler would run before it).
        assert not any(rule.is_regex for rule in scope.rules)
        taking = next((rule for rule in scope.rules if get["path"].startswith(rule.path)), None)
        assert taking is None or taking.exclude, f"{probe} {get['path']} is proxied by {taking}"
    # Writable places for the PidFile and the control socket on a read-only root.
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    for place in (config.pid_file, config.control_socket or ""):
        assert any(place.startswith(w.rstrip("/") + "/") for w in writable), place
    # A Service selects these pods on a port the container serves.
    labels = pod.get("labels") or deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in of_kind("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert services and all(p["targetPort"] in ports for s in services for p in s["spec"]["ports"])


def haproxy_cfg() -> str:
    (configmap,) = [c for c in of_kind("ConfigMap") if "haproxy.cfg" in c["data"]]
    return configmap["data"]["haproxy.cfg"]


def test_the_haproxy_variant_sends_proxy_v2_to_the_port_that_expects_it(tmp_path):
    (behind,) = [d for d in tunnel_deployments() if "haproxy" in d["metadata"]["name"]]
    config, _, _ = carried_config(behind, tmp_path)
    cfg = haproxy_cfg()
    assert "mode tcp" in cfg and "option httpchk GET /ready" in cfg
    (default_server,) = re.findall(r"^\s*default-server (.*)$", cfg, re.M)
    options = default_server.split()
    assert "send-proxy-v2" in options and "check" in options
    check_port = int(options[options.index("port") + 1])
    (template,) = re.findall(r"^\s*server-template \S+ \d+ _(\w+)\._tcp\.([\w.-]+?)\.[\w-]+\.svc", cfg, re.M)
    port_name, service_name = template
    (headless,) = [s for s in of_kind("Service") if s["metadata"]["name"] == service_name]
    assert headless["spec"]["clusterIP"] == "None"  # SRV records per pod
    traffic_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == port_name)
    by_port = {lst.port: lst for lst in config.listeners}
    assert by_port[traffic_port].proxy_protocol  # RemoteIPProxyProtocol On where HAProxy sends
    assert not by_port[check_port].proxy_protocol  # checks on the probe port carry no header
    scope = config.vhost_for(by_port[check_port], None)[0]
    assert effective_scope(scope, "/ready").handler == "ready"
    container = behind["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["port"] == check_port


def test_the_haproxy_configuration_passes_haproxy_c(tmp_path):
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if binary is None:
        pytest.skip("haproxy is not installed (make system-deps installs it)")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_cfg())
    out = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "Configuration file is valid" in out.stdout + out.stderr, out.stdout + out.stderr
