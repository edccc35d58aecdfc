"""Tests for lanchat.netif: the pure choice on fake interfaces, plus one read of this machine."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from lanchat.errors import ConfigError, InterfaceError
from lanchat.netif import (
    Choice,
    InterfaceAddress,
    InterfaceInfo,
    IPv4Net,
    IPv6Addr,
    _interface_from_raw,
    _read_sys_hints,
    _SysHints,
    _virtual_kind,
    choose_interfaces,
    interface_for_source,
    is_on_link,
    read_interfaces,
)


def nic(
    name: str,
    *cidrs: str,
    index: int = 0,
    up: bool = True,
    loopback: bool = False,
    multicast: bool = True,
    point_to_point: bool = False,
    kind: str | None = None,
) -> InterfaceInfo:
    """A fake interface with IPv4 addresses given as "a.b.c.d/len"."""
    nets = []
    for cidr in cidrs:
        address, _, prefixlen = cidr.partition("/")
        nets.append(IPv4Net(address, int(prefixlen)))
    return InterfaceInfo(
        name=name,
        index=index,
        up=up,
        loopback=loopback,
        multicast=multicast,
        point_to_point=point_to_point,
        virtual_kind=kind,
        ipv4=tuple(nets),
    )


# Linux `lo` has no IFF_MULTICAST flag, yet multicast on it works.
LO = nic("lo", "127.0.0.1/8", index=1, loopback=True, multicast=False)
ETH0 = nic("eth0", "192.168.1.7/24", index=2)
WLAN0 = nic("wlan0", "10.0.0.5/24", "10.0.1.5/24", index=3)
DOCKER0 = nic("docker0", "172.17.0.1/16", index=4, kind="docker")
TUN0 = nic("tun0", "10.8.0.6/32", index=5, point_to_point=True, kind="tun")
VETH = nic("veth1a2b3c", index=6, kind="veth")
VIRBR0 = nic("virbr0", "192.168.122.1/24", index=7, kind="virtual bridge")
DESKTOP = (LO, ETH0, WLAN0, DOCKER0, TUN0, VETH, VIRBR0)


def reasons(choice: Choice) -> dict[str, str]:
    return {v.name: v.reason for v in choice.verdicts}


def used_names(choice: Choice) -> list[str]:
    return [info.name for info in choice.used]


# --- choose_interfaces: default rules ---------------------------------------


def test_desktop_uses_only_the_lan_interfaces() -> None:
    choice = choose_interfaces(DESKTOP)
    assert used_names(choice) == ["eth0", "wlan0"]
    assert not choice.loopback_only
    why = reasons(choice)
    assert why["eth0"] == "up, multicast, 192.168.1.7/24"
    assert why["lo"].startswith("loopback")
    assert why["docker0"].startswith("Docker bridge")
    assert why["tun0"].startswith("point-to-point (VPN)")
    assert why["veth1a2b3c"] == "no IPv4 address"
    assert why["virbr0"].startswith("virtual bridge")
    assert "--interface" in why["docker0"]


def test_every_interface_gets_a_verdict() -> None:
    choice = choose_interfaces(DESKTOP)
    assert [v.name for v in choice.verdicts] == [info.name for info in DESKTOP]
    assert all(v.reason for v in choice.verdicts)
    assert [v.used for v in choice.verdicts] == [info in choice.used for info in DESKTOP]


def test_first_ipv4_address_is_the_join_address() -> None:
    choice = choose_interfaces(DESKTOP)
    assert choice.addresses == ("192.168.1.7", "10.0.0.5")
    assert WLAN0.primary_ipv4 == IPv4Net("10.0.0.5", 24)
    assert "10.0.0.5/24, 10.0.1.5/24" in reasons(choice)["wlan0"]


def test_down_and_no_multicast_are_skipped() -> None:
    down = nic("eth1", "192.168.2.7/24", up=False)
    silent = nic("eth2", "192.168.3.7/24", multicast=False)
    choice = choose_interfaces([ETH0, down, silent])
    assert used_names(choice) == ["eth0"]
    assert reasons(choice)["eth1"] == "down"
    assert reasons(choice)["eth2"].startswith("no multicast flag")


def test_lan_bridge_and_vlan_are_used() -> None:
    br0 = nic("br0", "192.168.1.2/24", kind="bridge")
    vlan = nic("eth0.100", "10.100.0.2/24", kind="vlan")
    assert used_names(choose_interfaces([br0, vlan])) == ["br0", "eth0.100"]


def test_only_loopback_falls_back_to_it() -> None:
    choice = choose_interfaces([LO])
    assert choice.used == (LO,)
    assert choice.loopback_only
    assert choice.verdicts[0].used
    assert "nothing else" in choice.verdicts[0].reason


def test_loopback_fallback_when_everything_else_is_skipped() -> None:
    choice = choose_interfaces([LO, DOCKER0, TUN0, VETH])
    assert used_names(choice) == ["lo"]
    assert choice.loopback_only
    assert not reasons(choice)["docker0"].startswith("loopback")


def test_excluded_by_name_and_by_address() -> None:
    choice = choose_interfaces(DESKTOP, excluded=("eth0", "10.0.1.5"))
    assert used_names(choice) == ["lo"]
    assert choice.loopback_only
    assert reasons(choice)["eth0"] == "excluded by option"
    assert reasons(choice)["wlan0"] == "excluded by option"


def test_excluding_an_absent_interface_is_harmless() -> None:
    assert used_names(choose_interfaces([ETH0], excluded=("docker0",))) == ["eth0"]


def test_no_interface_at_all_raises() -> None:
    with pytest.raises(InterfaceError, match=r"^no usable network interface: none found$"):
        choose_interfaces([])


def test_nothing_usable_raises_with_reasons() -> None:
    lo_down = nic("lo", "127.0.0.1/8", up=False, loopback=True, multicast=False)
    with pytest.raises(InterfaceError, match="no usable network interface") as caught:
        choose_interfaces([lo_down, DOCKER0, VETH])
    message = str(caught.value)
    assert "lo: down" in message
    assert "docker0: Docker bridge" in message
    assert "veth1a2b3c: no IPv4 address" in message
    assert "--interface" not in message


def test_excluded_loopback_is_no_fallback() -> None:
    with pytest.raises(InterfaceError, match="lo: excluded by option"):
        choose_interfaces([LO, DOCKER0], excluded=["lo"])


def test_interface_error_is_a_config_and_value_error() -> None:
    with pytest.raises(ConfigError):
        choose_interfaces([])
    with pytest.raises(ValueError):
        choose_interfaces([])


# --- choose_interfaces: wanted ----------------------------------------------


def test_wanted_by_name_uses_exactly_that_one_even_if_virtual() -> None:
    choice = choose_interfaces(DESKTOP, wanted=("docker0",))
    assert used_names(choice) == ["docker0"]
    assert not choice.loopback_only
    why = reasons(choice)
    assert why["docker0"] == "chosen with --interface, docker, 172.17.0.1/16"
    assert why["eth0"] == "not chosen (--interface given)"


def test_wanted_by_address() -> None:
    choice = choose_interfaces(DESKTOP, wanted=["10.0.1.5"])
    assert used_names(choice) == ["wlan0"]


def test_wanted_name_and_its_address_use_it_once() -> None:
    choice = choose_interfaces(DESKTOP, wanted=["eth0", "192.168.1.7", "tun0"])
    assert used_names(choice) == ["eth0", "tun0"]


def test_wanted_as_a_single_string() -> None:
    assert used_names(choose_interfaces(DESKTOP, wanted="eth0")) == ["eth0"]


def test_wanted_loopback_without_multicast_flag() -> None:
    choice = choose_interfaces(DESKTOP, wanted=["lo"])
    assert choice.used == (LO,)
    assert choice.loopback_only
    assert reasons(choice)["lo"] == "chosen with --interface, loopback, 127.0.0.1/8"


def test_wanted_unknown_raises() -> None:
    with pytest.raises(InterfaceError, match=r"'eth9'.*have: lo 127\.0\.0\.1, eth0 192\.168"):
        choose_interfaces(DESKTOP, wanted=["eth0", "eth9"])


def test_wanted_unknown_address_raises() -> None:
    with pytest.raises(InterfaceError, match=r"'192\.168\.1\.8'"):
        choose_interfaces(DESKTOP, wanted=["192.168.1.8"])


def test_wanted_but_down_raises() -> None:
    down = nic("eth1", "192.168.2.7/24", up=False)
    with pytest.raises(InterfaceError, match=r"^interface eth1 is down$"):
        choose_interfaces([ETH0, down], wanted=["eth1"])


def test_wanted_without_ipv4_raises() -> None:
    with pytest.raises(InterfaceError, match=r"^interface veth1a2b3c has no IPv4 address$"):
        choose_interfaces(DESKTOP, wanted=["veth1a2b3c"])


def test_wanted_and_excluded_raises() -> None:
    with pytest.raises(InterfaceError, match="both chosen and excluded"):
        choose_interfaces(DESKTOP, wanted=["eth0"], excluded=["192.168.1.7"])


def test_wanted_with_other_excluded_shows_exclusion() -> None:
    choice = choose_interfaces(DESKTOP, wanted=["eth0"], excluded=["wlan0"])
    assert reasons(choice)["wlan0"] == "excluded by option"


# --- source addresses -------------------------------------------------------


def test_interface_for_source() -> None:
    used = (ETH0, WLAN0)
    assert interface_for_source(used, "192.168.1.20") is ETH0
    assert interface_for_source(used, "10.0.1.9") is WLAN0
    assert interface_for_source(used, "192.168.2.20") is None
    assert interface_for_source(used, "127.0.0.1") is None


@pytest.mark.parametrize(
    "source",
    ["192.168.1.0", "192.168.1.255", "224.0.0.251", "0.0.0.0", "255.255.255.255", "nonsense"],
)
def test_impossible_sources_are_never_on_link(source: str) -> None:
    assert interface_for_source((ETH0,), source) is None
    assert not is_on_link((ETH0, LO), source)


def test_is_on_link() -> None:
    assert is_on_link((ETH0,), "192.168.1.1")
    assert not is_on_link((ETH0,), "8.8.8.8")
    assert not is_on_link((ETH0,), "127.0.0.1")
    assert is_on_link((ETH0, LO), "127.0.0.1")
    assert is_on_link(iter([ETH0, LO]), "127.0.0.1")  # any iterable, read once
    assert not is_on_link((), "192.168.1.1")


def test_loopback_counts_even_without_its_address() -> None:
    odd_lo = nic("lo0", "127.0.0.1/32", loopback=True)
    assert is_on_link((odd_lo,), "127.0.0.2")


def test_point_to_point_peer_and_slash_31() -> None:
    tun = InterfaceInfo(
        "tun0", 5, True, False, True, True, "tun", (IPv4Net("10.8.0.6", 32, "10.8.0.5"),)
    )
    assert is_on_link((tun,), "10.8.0.5")
    assert not is_on_link((tun,), "10.8.0.7")
    link31 = nic("eth0", "10.0.0.0/31")
    assert is_on_link((link31,), "10.0.0.1")


# --- IPv4Net ----------------------------------------------------------------


def test_ipv4net() -> None:
    net = IPv4Net("192.168.1.7", 24)
    assert net.netmask == "255.255.255.0"
    assert net.cidr == "192.168.1.7/24"
    assert net.contains("192.168.1.200")
    assert not net.contains("192.168.2.1")
    assert not net.contains("fe80::1")
    assert not net.contains("")
    assert net == IPv4Net("192.168.1.7", 24)


@pytest.mark.parametrize(
    ("address", "prefixlen"), [("192.168.1.300", 24), ("192.168.1.7", 33), ("::1", 8)]
)
def test_ipv4net_rejects_malformed(address: str, prefixlen: int) -> None:
    with pytest.raises(ValueError):
        IPv4Net(address, prefixlen)


# --- the read, with fake raw data -------------------------------------------

# Shapes as netifaces-plus 0.12 reports them on Linux.
LO_INET = [{"addr": "127.0.0.1", "netmask": "255.0.0.0", "peer": "127.0.0.1"}]
ETH_INET = [{"addr": "192.168.1.7", "netmask": "255.255.255.0", "broadcast": "192.168.1.255"}]
ETH_INET6 = [
    {"addr": "fd00::2", "netmask": "ffff:ffff:ffff:ffff::/64"},
    {"addr": "fe80::fc:ff:fe00:1%eth0", "netmask": "ffff:ffff:ffff:ffff::/64"},
]


def test_raw_linux_loopback() -> None:
    info = _interface_from_raw("lo", 1, LO_INET, [{"addr": "::1"}], _SysHints(0x9, 772, False))
    assert info.loopback and info.up and not info.multicast and not info.point_to_point
    assert info.virtual_kind is None
    assert info.ipv4 == (IPv4Net("127.0.0.1", 8),)


def test_raw_linux_ethernet_with_ipv6_scope() -> None:
    info = _interface_from_raw("eth0", 4, ETH_INET, ETH_INET6, _SysHints(0x1003, 1))
    assert info.up and info.multicast and not info.loopback and info.virtual_kind is None
    assert info.ipv4 == (IPv4Net("192.168.1.7", 24),)
    assert [(a.address, a.scope_id, a.link_local) for a in info.ipv6] == [
        ("fd00::2", 0, False),
        ("fe80::fc:ff:fe00:1", 4, True),
    ]


def test_raw_linux_down_and_point_to_point() -> None:
    down = _interface_from_raw("eth1", 5, [], [], _SysHints(0x1002, 1))
    assert not down.up
    tun = _interface_from_raw(
        "tun0",
        6,
        [{"addr": "10.8.0.6", "netmask": "255.255.255.255", "peer": "10.8.0.5"}],
        [],
        _SysHints(0x10D1, 65534, False, tun_flags=0x1001),
    )
    assert tun.point_to_point and tun.up
    assert tun.virtual_kind == "tun"
    assert tun.ipv4 == (IPv4Net("10.8.0.6", 32, "10.8.0.5"),)


def test_raw_without_sys_degrades_gracefully() -> None:
    lo0 = _interface_from_raw("lo0", 1, LO_INET, [], None)
    assert lo0.loopback and lo0.up and lo0.multicast and not lo0.point_to_point
    en0 = _interface_from_raw("en0", 4, ETH_INET, [{"addr": "fe80::1%12"}], None)
    assert en0.up and en0.multicast and not en0.loopback and not en0.point_to_point
    assert en0.ipv6[0].scope_id == 12
    utun = _interface_from_raw("utun3", 9, [{"addr": "10.6.0.2", "peer": "10.6.0.1"}], [], None)
    assert utun.point_to_point and utun.virtual_kind == "tun"
    assert utun.ipv4 == (IPv4Net("10.6.0.2", 32, "10.6.0.1"),)


def test_raw_skips_unusable_addresses() -> None:
    inet = [{"addr": "0.0.0.0"}, {"netmask": "255.0.0.0"}, {"addr": "10.1.2.3", "netmask": "0.255"}]
    info = _interface_from_raw("eth0", 2, inet, [{"addr": "bogus"}], None)
    assert info.ipv4 == (IPv4Net("10.1.2.3", 32),)
    assert info.ipv6 == ()


@pytest.mark.parametrize(
    ("name", "hints", "kind"),
    [
        ("docker0", None, "docker"),
        ("br-0123456789ab", None, "docker"),
        ("veth9f1c2d", None, "veth"),
        ("virbr0", None, "virtual bridge"),
        ("vboxnet0", None, "virtual bridge"),
        ("vmnet8", None, "virtual bridge"),
        ("cni0", None, "container"),
        ("flannel.1", None, "container"),
        ("tailscale0", None, "vpn"),
        ("wg0", None, "vpn"),
        ("tun0", None, "tun"),
        ("utun2", None, "tun"),
        ("tap0", None, "tap"),
        ("eth0", None, None),
        ("en0", None, None),
        ("eth0", _SysHints(0x1003, 1), None),
        ("br0", _SysHints(0x1003, 1, False, "bridge", bridge=True, bridge_uplink=True), "bridge"),
        ("br0", _SysHints(0x1003, 1, False, "bridge", bridge=True), "virtual bridge"),
        ("vpn0", _SysHints(0x1003, 1, False, tun_flags=0x1002), "tap"),
        ("vpn0", _SysHints(0x1091, 65534, False, tun_flags=0x1001), "tun"),
        ("home", _SysHints(0x91, 65534, False, "wireguard"), "vpn"),
        ("eth0.100", _SysHints(0x1003, 1, False, "vlan"), "vlan"),
        ("ifb0", _SysHints(0x82, 1, False), "virtual"),
    ],
)
def test_virtual_kind(name: str, hints: _SysHints | None, kind: str | None) -> None:
    assert _virtual_kind(name, hints) == kind


def _fake_sys_interface(root: Path, name: str, flags: str, **files: str) -> Path:
    base = root / name
    base.mkdir()
    (base / "flags").write_text(flags + "\n")
    (base / "type").write_text("1\n")
    for file, text in files.items():
        (base / file).write_text(text)
    return base


def test_read_sys_hints_from_a_fake_sysfs(tmp_path: Path) -> None:
    eth = _fake_sys_interface(tmp_path, "eth0", "0x1003", uevent="INTERFACE=eth0\nIFINDEX=2\n")
    (eth / "device").mkdir()
    _fake_sys_interface(tmp_path, "tap0", "0x1003", tun_flags="0x1002\n")
    for bridge, ports in (("br0", ["eth0", "tap0"]), ("br1", ["tap0"])):
        base = _fake_sys_interface(tmp_path, bridge, "0x1003", uevent="DEVTYPE=bridge\n")
        (base / "bridge").mkdir()
        (base / "brif").mkdir()
        for port in ports:
            (base / "brif" / port).mkdir()

    assert _read_sys_hints("eth0", tmp_path) == _SysHints(0x1003, 1, True)
    tap = _read_sys_hints("tap0", tmp_path)
    assert tap is not None and tap.tun_flags == 0x1002 and not tap.has_device
    assert _read_sys_hints("br0", tmp_path) == _SysHints(
        0x1003, 1, False, "bridge", bridge=True, bridge_uplink=True
    )
    br1 = _read_sys_hints("br1", tmp_path)
    assert br1 is not None and br1.bridge and not br1.bridge_uplink
    assert _virtual_kind("br1", br1) == "virtual bridge"
    assert _read_sys_hints("missing0", tmp_path) is None


# --- this machine (reading only) --------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux names loopback 'lo'")
def test_read_interfaces_on_this_machine() -> None:
    infos = read_interfaces()
    by_name = {info.name: info for info in infos}
    lo = by_name["lo"]
    assert lo.loopback and lo.up
    assert lo.index > 0
    assert "127.0.0.1" in [net.address for net in lo.ipv4]
    assert lo.virtual_kind is None
    choice = choose_interfaces(infos)
    assert [v.name for v in choice.verdicts] == [info.name for info in infos]


# --- IPv6: the choice per family --------------------------------------------


def ll(address: str, index: int) -> IPv6Addr:
    return IPv6Addr(address, index, True)


DUAL = dataclasses.replace(ETH0, ipv6=(IPv6Addr("fd00::7", 0, False), ll("fe80::7", 2)))
V6_ONLY = dataclasses.replace(nic("eth1", index=8), ipv6=(ll("fe80::8", 8),))
GLOBAL_V6_ONLY = dataclasses.replace(
    nic("eth2", index=9), ipv6=(IPv6Addr("2001:db8::9", 0, False),)
)


def test_dual_stack_interface_is_joined_once_per_family() -> None:
    choice = choose_interfaces((LO, DUAL, V6_ONLY, DOCKER0))
    assert used_names(choice) == ["eth0", "eth1"]
    assert choice.joined == (
        InterfaceAddress("eth0", "192.168.1.7", 2),
        InterfaceAddress("eth0", "fe80::7", 2),
        InterfaceAddress("eth1", "fe80::8", 8),
    )
    assert [where.ipv6 for where in choice.joined] == [False, True, True]
    assert reasons(choice)["eth0"] == "up, multicast, 192.168.1.7/24, fe80::7%eth0"
    assert reasons(choice)["eth1"] == "up, multicast, fe80::8%eth1"
    assert choice.uses_ipv6(DUAL) and choice.uses_ipv4(DUAL)
    assert choice.uses_ipv6(V6_ONLY) and not choice.uses_ipv4(V6_ONLY)
    assert choice.addresses == ("192.168.1.7",)


def test_ipv4_only_and_ipv6_only_choose_per_family() -> None:
    v4 = choose_interfaces((LO, DUAL, V6_ONLY), ipv6=False)
    assert used_names(v4) == ["eth0"] and [w.address for w in v4.joined] == ["192.168.1.7"]
    assert reasons(v4)["eth1"] == "no IPv4 address (IPv6 link-local only: drop --ipv4-only)"
    v6 = choose_interfaces((LO, DUAL, V6_ONLY, WLAN0), ipv4=False)
    assert used_names(v6) == ["eth0", "eth1"]
    assert [w.address for w in v6.joined] == ["fe80::7", "fe80::8"]
    assert reasons(v6)["wlan0"] == "no IPv6 link-local address (IPv4 only: drop --ipv6-only)"
    assert reasons(v6)["lo"].startswith("no IPv6 link-local address")
    with pytest.raises(InterfaceError, match="both turned off"):
        choose_interfaces((DUAL,), ipv4=False, ipv6=False)


def test_ipv6_needs_a_link_local_address_and_an_index() -> None:
    choice = choose_interfaces((LO, GLOBAL_V6_ONLY))
    assert reasons(choice)["eth2"] == "no IPv4 or IPv6 link-local address"
    assert choice.loopback_only
    no_index = dataclasses.replace(V6_ONLY, index=0)
    assert no_index.link_local_ipv6 is None
    with pytest.raises(InterfaceError, match=r"^interface eth1 has no IPv6 link-local address$"):
        choose_interfaces((no_index,), ["eth1"], ipv4=False)
    with pytest.raises(InterfaceError, match="no usable network interface"):
        choose_interfaces((LO, V6_ONLY), ipv4=False, excluded=["eth1"])


def test_interfaces_can_be_named_by_ipv6_address() -> None:
    choice = choose_interfaces((DUAL, V6_ONLY), ["fe80::8"])
    assert used_names(choice) == ["eth1"]
    assert reasons(choice)["eth1"] == "chosen with --interface, fe80::8%eth1"


def test_ipv6_sources_on_link() -> None:
    used = (DUAL, V6_ONLY)
    assert interface_for_source(used, "fe80::1%eth1") is V6_ONLY
    assert interface_for_source(used, "fe80::1%2") is DUAL  # a numeric scope is an index
    assert interface_for_source(used, "fe80::1") is None  # no link: nowhere
    assert interface_for_source(used, "fe80::1%eth7") is None
    assert interface_for_source(used, "fd00::99") is DUAL  # in eth0's /64
    assert interface_for_source(used, "2001:db8::1") is None
    assert interface_for_source(used, "::ffff:192.168.1.20") is DUAL
    assert interface_for_source(used, "ff02::1%eth0") is None
    assert is_on_link(used, "fe80::1%eth0")
    assert not is_on_link(used, "2001:db8::1")
    assert not is_on_link(used, "::1")
    assert is_on_link((*used, LO), "::1")


def test_raw_ipv6_prefix_lengths() -> None:
    inet6 = [
        {"addr": "fd00::2", "netmask": "ffff:ffff:ffff:ff00::/56"},
        {"addr": "fe80::2%eth0", "netmask": "64"},
        {"addr": "fd00:1::2"},
    ]
    info = _interface_from_raw("eth0", 4, [], inet6, _SysHints(0x1003, 1))
    assert [a.prefixlen for a in info.ipv6] == [56, 64, 64]
    assert info.link_local_ipv6 == IPv6Addr("fe80::2", 4, True)
