"""A two-node SLURM cluster on one machine: each node a network namespace with its own host name
(a UTS namespace), joined by a veth link on a private /24 that exists only between them.

    root namespace:  munged (its socket on the shared filesystem reaches both nodes)
    node0 (ns):      slurmctld, slurmd -N node0   10.231.T.1/24 on mttt0
    node1 (ns):      slurmd -N node1              10.231.T.2/24 on mttt0

Each node's daemons see a hosts file naming both nodes, bound over /etc/hosts in their own mount
namespace; the filesystem is otherwise shared, as a cluster's run directory is (and /sys with
its cgroups stays as it is, which `ip netns exec` would remount). Client commands (sbatch, scontrol) run
on node0. Stopping the cluster stops the daemons and removes the namespaces (and with them the
link) and the hosts files, also after a failed start.
"""

import os
import shutil
import subprocess
from pathlib import Path

from tests.launchers.slurm_cluster import Cluster, new_cluster, start_daemon, wait_idle, write_conf

INTERFACE = "mttt0"
"""The link's name inside both namespaces: what GLOO_SOCKET_IFNAME names on every node."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def missing_reason() -> str | None:
    """Why no network namespaces can be made here (None: they can)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return "network namespaces need root, iproute2 and unshare"
    probe = f"mttt-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def _link(namespaces: list[str], addresses: list[str], tag: str, cluster: Cluster) -> None:
    """The namespaces, each with loopback up and its end of one veth pair named INTERFACE."""
    ends = [f"mttt{tag}a", f"mttt{tag}b"]
    for name in namespaces:  # what a killed earlier session of the same tag left behind
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", ends[0]], capture_output=True)
    for ns in namespaces:
        _ip("netns", "add", ns)
        cluster.teardown.append(lambda ns=ns: subprocess.run(["ip", "netns", "del", ns], capture_output=True))
    _ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
    for ns, end, address in zip(namespaces, ends, addresses):
        _ip("link", "set", end, "netns", ns)
        for args in (("link", "set", end, "name", INTERFACE), ("addr", "add", f"{address}/24", "dev", INTERFACE),
                     ("link", "set", INTERFACE, "up"), ("link", "set", "lo", "up")):
            _ip("-n", ns, *args)


def _hosts_file(nodes: dict[str, str], cluster: Cluster) -> Path:
    path = cluster.root / "hosts"
    path.write_text("127.0.0.1 localhost\n" + "".join(f"{address} {name}\n" for name, address in nodes.items()))
    return path


def on_node(ns: str, host: str, hosts: Path, command: list[str]) -> list[str]:
    """`command` inside network namespace `ns`, with host name `host` and `hosts` as /etc/hosts."""
    script = f'mount --bind {hosts} /etc/hosts && hostname {host} && exec "$@"'
    return ["nsenter", f"--net=/run/netns/{ns}", "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", script, "sh", *command]


def start_two_node_cluster() -> Cluster:
    tag = str(20 + os.getpid() % 200)  # the /24 and the names, by process id: sessions at once rarely share one
    names = [f"node0-{tag}", f"node1-{tag}"]
    namespaces = [f"mttt-{tag}-{name}" for name in ("node0", "node1")]
    nodes = {name: f"10.231.{tag}.{i + 1}" for i, name in enumerate(names)}
    cluster = new_cluster()
    try:
        _link(namespaces, list(nodes.values()), tag, cluster)
        hosts = _hosts_file(nodes, cluster)
        write_conf(cluster, names[0], nodes[names[0]], nodes)
        cluster.prefix = tuple(on_node(namespaces[0], names[0], hosts, []))
        conf = str(cluster.conf)
        start_daemon(cluster, "slurmctld", on_node(namespaces[0], names[0], hosts, ["slurmctld", "-D", "-f", conf]))
        for ns, name in zip(namespaces, names):
            (cluster.root / "spool" / name).mkdir()
            start_daemon(cluster, f"slurmd-{name}", on_node(ns, name, hosts, ["slurmd", "-D", "-N", name, "-f", conf]))
        cluster.nodes = dict(zip(names, namespaces))
        wait_idle(cluster, 2)
    except BaseException:
        cluster.stop()
        raise
    return cluster
