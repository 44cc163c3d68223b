"""What a fence agent says of itself: ``action=metadata`` on stdin prints XML, read here.

The format is the one the ``fence-agents`` library prints (``fencing.py``'s ``metadata()``),
which Pacemaker reads too::

    <resource-agent name="fence_ipmilan" shortdesc="Fence agent for IPMI">
      <symlink name="fence_ilo3" shortdesc="..."/>
      <parameters>
        <parameter name="ip" unique="0" required="1" obsoletes="ipaddr">
          <getopt mixed="-a, --ip=[ip]" />
          <content type="string" />
          <shortdesc lang="en">IP address or hostname of fencing device</shortdesc>
        </parameter>
        <parameter name="ipaddr" unique="0" required="1" deprecated="1"> ...
        <parameter name="auth" ...>
          <content type="select"><option value="md5" /><option value="none" /></content>
      </parameters>
      <actions><action name="on" automatic="0"/><action name="off" /> ...</actions>
    </resource-agent>

A renamed parameter appears twice: the old name marked ``deprecated="1"``, the new one with
``obsoletes="<old name>"``; both work, and a required parameter is given when either is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Final

__all__ = ["FenceMetadata", "FenceMetadataError", "FenceParameter"]

#: The name under which an agent takes the target's plug, in the order Pacemaker prefers
#: them when the device does not say (``pcmk_host_argument``).
HOST_ARGUMENTS: Final = ("plug", "port")


class FenceMetadataError(ValueError):
    """An agent's metadata could not be run or read; the message says which agent and why."""


@dataclass(frozen=True, slots=True)
class FenceParameter:
    """One ``<parameter>`` of a fence agent's metadata.

    ``type`` is the ``<content type>``: ``string``, ``integer``, ``second``, ``boolean`` or
    ``select`` (then ``choices`` lists the values). ``obsoletes`` names the older parameter
    this one replaces; ``deprecated`` marks that older one.
    """

    name: str
    type: str = "string"
    required: bool = False
    default: str | None = None
    deprecated: bool = False
    obsoletes: str | None = None
    choices: tuple[str, ...] = ()
    shortdesc: str = ""


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on", "y")


@dataclass(frozen=True, slots=True)
class FenceMetadata:
    """A fence agent's description: its parameters and the actions it supports."""

    name: str
    shortdesc: str
    parameters: tuple[FenceParameter, ...]
    actions: tuple[str, ...]
    #: other names the same agent is installed under (fence_ipmilan: fence_idrac, ...)
    symlinks: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, where: str) -> FenceMetadata:
        """Parse the XML ``text`` printed by agent ``where``; FenceMetadataError if unusable."""
        if not text.strip():
            raise FenceMetadataError(f"{where} printed no metadata")
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise FenceMetadataError(f"{where} metadata is not well-formed XML: {exc}") from None
        if root.tag != "resource-agent":
            raise FenceMetadataError(f"{where} metadata is not fence agent metadata: the top "
                                     f"element is <{root.tag}>, not <resource-agent>")
        parameters: dict[str, FenceParameter] = {}
        for element in root.iterfind("parameters/parameter"):
            name = element.get("name", "").strip()
            if not name:
                raise FenceMetadataError(f"{where} metadata has a <parameter> without a name")
            content = element.find("content")
            choices = () if content is None else tuple(
                value for option in content.iterfind("option")
                if (value := option.get("value")) is not None)
            parameters.setdefault(name, FenceParameter(
                name=name,
                type=(content.get("type", "string") if content is not None else "string"),
                required=_flag(element.get("required")),
                default=content.get("default") if content is not None else None,
                deprecated=_flag(element.get("deprecated")),
                obsoletes=element.get("obsoletes") or None,
                choices=choices,
                shortdesc=" ".join((element.findtext("shortdesc") or "").split()),
            ))
        actions = tuple(dict.fromkeys(
            name for element in root.iterfind("actions/action")
            if (name := element.get("name", "").strip())))
        return cls(
            name=root.get("name", "").strip(),
            shortdesc=" ".join(root.get("shortdesc", "").split()),
            parameters=tuple(parameters.values()),
            actions=actions,
            symlinks=tuple(name for element in root.iterfind("symlink")
                           if (name := element.get("name", "").strip())),
        )

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def parameter(self, name: str) -> FenceParameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def supports(self, action: str) -> bool:
        return action in self.actions

    def aliases(self, name: str) -> frozenset[str]:
        """``name`` and every parameter that means the same, through ``obsoletes`` links
        either way (``ip``: {ip, ipaddr}; ``username``: {username, login})."""
        found = {name}
        while True:
            more = {p.name for p in self.parameters if p.obsoletes in found}
            more |= {p.obsoletes for p in self.parameters if p.name in found and p.obsoletes}
            if more <= found:
                return frozenset(found)
            found |= more

    @property
    def host_argument(self) -> str | None:
        """The parameter that takes the target's plug: ``plug`` where the agent has it, else
        ``port``; None when it has neither."""
        names = set(self.names())
        return next((name for name in HOST_ARGUMENTS if name in names), None)
