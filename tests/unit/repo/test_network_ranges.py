"""The local cluster's address ranges (hack/node.sh, hack/kwok/kwok.yaml, hack/lib.sh)
are disjoint: a fake (kwok) pod never gets a real pod's address, neither a Service's, and
every range a packet could be sent to is routed `unreachable` on this machine, both set up
and taken down."""

from __future__ import annotations

import ipaddress
import re

import yaml

from fttestkit.paths import HACK


def _shell_value(script: str, name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", (HACK / script).read_text(), flags=re.MULTILINE)
    assert match, f"{name} is not set in hack/{script}"
    return match.group(1)


def test_fake_pods_real_pods_and_services_never_share_an_address() -> None:
    kwok = yaml.safe_load((HACK / "kwok" / "kwok.yaml").read_text())["options"]["cidr"]
    fake = ipaddress.ip_network(kwok)
    real = ipaddress.ip_network(_shell_value("node.sh", "CLUSTER_POD_CIDR"))
    node = ipaddress.ip_network(_shell_value("node.sh", "NODE_POD_CIDR"))
    services = ipaddress.ip_network(_shell_value("lib.sh", "SERVICE_CIDR"))
    assert fake == ipaddress.ip_network(_shell_value("node.sh", "KWOK_POD_CIDR"))
    assert node.subnet_of(real)
    for one, other in ((fake, real), (fake, services), (real, services)):
        assert not one.overlaps(other), (one, other)


def test_every_range_is_routed_unreachable_up_and_down() -> None:
    text = (HACK / "node.sh").read_text()
    up = text[text.index("node_network() {") : text.index("node_network_down() {")]
    down = text[text.index("node_network_down() {") :]
    for variable in ("CLUSTER_POD_CIDR", "KWOK_POD_CIDR", "SERVICE_CIDR"):
        assert f'ip route replace unreachable "${variable}"' in up, variable
        assert f'ip route del unreachable "${variable}"' in down, variable
