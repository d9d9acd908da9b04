"""The incremental plan, without Asterisk: reading our dialplan files, the operations
from one config to another, and which endpoints a PJSIP reload must bring.
(That Asterisk ends up where a full reload of the same files would is proven in
test_incremental.py against the lab.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.apply.plan import (
    AddInclude,
    AddStep,
    Operation,
    RemoveContext,
    RemoveInclude,
    RemoveStep,
    dialplan_operations,
    live_differences,
    pjsip_change,
)
from provisioner.asterisk.parse import Context, Dialplan, NotOurs, parse_dialplan

GOLDEN = Path(__file__).parent / "golden"
SHARED = {"carrier-in"}


def test_reads_the_golden_dialplan_as_pbx_config_would() -> None:
    plan = parse_dialplan([(GOLDEN / "dialplan-tenant-k100200.conf").read_text()])
    internal = plan["k100200-internal"]
    assert internal.steps[("100", "hint")] == ("PJSIP/k100200-100", "")
    assert internal.steps[("100", "1")] == ("Dial", "PJSIP/k100200-100,30,tT")
    assert internal.steps[("100", "2")] == ("Hangup", "")  # `same => n`
    assert internal.steps[("600", "1")] == ("Dial", "PJSIP/k100200-101&PJSIP/k100200-201,20,tT")
    assert plan["k100200-site-ber-main"].includes == {"k100200-internal"}
    # Both blocks add to [carrier-in], which appears twice in the file: one context.
    carrier_in = plan["carrier-in"]
    assert carrier_in.steps[("_+4930123456X", "1")] == (
        "Set", "CHANNEL(accountcode)=K100200",
    )  # fmt: skip
    # The call's record: the PBX that used the block, then the block, our number, the
    # caller, the direction (steps 2 to 6).
    assert carrier_in.steps[("_+4930123456X", "2")] == ("Set", "CDR(pbx)=K100200")
    assert carrier_in.steps[("_+4930123456X", "7")] == ("Goto", "k100200-in-ber-main,${EXTEN},1")
    assert any(e.startswith("_+4989") for e, _ in carrier_in.steps)


def test_a_line_it_does_not_know_is_refused_not_guessed() -> None:
    with pytest.raises(NotOurs):
        parse_dialplan(["[a]\nexten => 1,n(label),NoOp()\n"])
    with pytest.raises(NotOurs):
        parse_dialplan(["exten => 1,1,NoOp()\n"])  # outside any context


def _sample() -> tuple[Dialplan, Dialplan]:
    before = parse_dialplan([
        "[t-internal]\nexten => 100,hint,PJSIP/t-100\nexten => 100,1,Dial(PJSIP/t-100)\n"
        " same => n,Hangup()\n"
        "[t-site-a]\ninclude => t-internal\nexten => 112,1,Hangup()\n"
        "[t-in-a]\nexten => _+49301X,1,Goto(t-internal,100,1)\n"
        "[carrier-in]\nexten => _+49301X,1,Goto(t-in-a,${EXTEN},1)\n",
    ])  # fmt: skip
    after = parse_dialplan([
        "[t-internal]\nexten => 100,1,Dial(PJSIP/t-100,30)\n"
        "exten => 101,hint,PJSIP/t-101\nexten => 101,1,Dial(PJSIP/t-101)\n"
        "[t-in-b]\nexten => _+49892X,1,Goto(t-internal,101,1)\n"
        "[carrier-in]\nexten => _+49892X,1,Goto(t-in-b,${EXTEN},1)\n",
    ])  # fmt: skip
    return before, after


def test_operations_add_first_route_last_and_remove_entry_first() -> None:
    before, after = _sample()
    ops = dialplan_operations(before, after, SHARED)
    assert ops == [
        AddStep("t-in-b", "_+49892X", "1", "Goto", "t-internal,101,1"),
        AddStep("t-internal", "100", "1", "Dial", "PJSIP/t-100,30"),
        AddStep("t-internal", "101", "1", "Dial", "PJSIP/t-101"),
        AddStep("t-internal", "101", "hint", "PJSIP/t-101", ""),
        # The moved number is routed only once the contexts it goes to are there.
        AddStep("carrier-in", "_+49892X", "1", "Goto", "t-in-b,${EXTEN},1"),
        # Nothing routes into a context that is about to go.
        RemoveStep("carrier-in", "_+49301X", "1"),
        RemoveContext("t-in-a"),
        RemoveStep("t-internal", "100", "2"),
        RemoveStep("t-internal", "100", "hint"),
        RemoveContext("t-site-a"),
    ]


def test_no_change_no_operation() -> None:
    before, _ = _sample()
    assert dialplan_operations(before, before, SHARED) == []


def test_the_check_of_a_shared_context_looks_only_at_our_keys() -> None:
    before, after = _sample()
    someone_elses = ("_+4922X", "1")
    live = Context(dict(after["carrier-in"].steps))
    live.steps[someone_elses] = ("Goto", "c-in,${EXTEN},1")
    assert (
        live_differences("carrier-in", after["carrier-in"], before["carrier-in"], live, True) == []
    )
    live.steps[("_+49301X", "1")] = ("Goto", "t-in-a,${EXTEN},1")  # not removed
    assert live_differences("carrier-in", after["carrier-in"], before["carrier-in"], live, True)
    # An own context must match whole, and one that went must be gone.
    extra = Context(dict(after["t-internal"].steps) | {("999", "1"): ("Hangup", "")})
    assert live_differences("t-internal", after["t-internal"], Context(), extra, False)
    assert live_differences("t-site-a", None, before["t-site-a"], Context(), False)
    assert live_differences("t-site-a", None, before["t-site-a"], None, False) == []


def _simulate(live: Dialplan, ops: list[Operation]) -> Dialplan:
    """What Asterisk does with the operations (as seen in the lab)."""
    out = {name: Context(dict(c.steps), set(c.includes)) for name, c in live.items()}
    for op in ops:
        match op:
            case AddStep(context, extension, priority, app, data):
                out.setdefault(context, Context()).steps[(extension, priority)] = (app, data)
            case RemoveStep(context, extension, priority):
                out[context].steps.pop((extension, priority), None)
            case AddInclude(context, included):
                out.setdefault(context, Context()).includes.add(included)
            case RemoveInclude(context, included):
                out[context].includes.discard(included)
            case RemoveContext(context):
                out.pop(context, None)
    return out


_names = st.sampled_from(["t-internal", "t-site-a", "t-in-a", "t-in-b", "carrier-in"])
_steps = st.dictionaries(
    st.tuples(st.sampled_from(["100", "101", "_+49X", "s"]), st.sampled_from(["hint", "1", "2"])),
    st.tuples(st.sampled_from(["Dial", "Goto", "Hangup"]), st.sampled_from(["", "a,1", "b"])),
    max_size=6,
)
_context = st.builds(Context, _steps, st.sets(st.sampled_from(["t-internal", "t-x"]), max_size=2))
_dialplans = st.dictionaries(_names, _context, max_size=5)


@settings(max_examples=300, deadline=None)
@given(_dialplans, _dialplans)
def test_operations_take_any_live_dialplan_to_the_wanted_one(
    before: Dialplan, after: Dialplan
) -> None:
    others = Context({("_+4922X", "1"): ("Goto", "c-in,${EXTEN},1")})  # another PBX's
    live = {**before, "carrier-in": _merge(before.get("carrier-in"), others)}
    result = _simulate(live, dialplan_operations(before, after, SHARED))
    for name in set(before) | set(after):
        if name == "carrier-in":
            continue
        if name in after:
            # (an empty context is not created: nothing can route into it anyway)
            assert result.get(name, Context()) == after[name], name
        else:
            assert name not in result
    wanted_in = _merge(after.get("carrier-in"), others)
    got_in = result.get("carrier-in", Context())
    assert got_in.steps == wanted_in.steps
    assert got_in.includes == wanted_in.includes


def _merge(a: Context | None, b: Context) -> Context:
    a = a or Context()
    return Context(a.steps | b.steps, a.includes | b.includes)


PHONE = """[t-100]
type = aor
max_contacts = 1

[t-100]
type = endpoint
context = t-site-a
"""


def test_pjsip_change_names_the_endpoints_a_reload_must_bring_and_take() -> None:
    trunk = "\n; --- trunk\n[t-trunk-a]\ntype = endpoint\ncontext = t-in-a\n"
    assert pjsip_change({"p": PHONE}, {"p": PHONE}) is None
    # A comment is no object: no reload.
    assert pjsip_change({"p": PHONE}, {"p": "; hello\n" + PHONE}) is None
    added = pjsip_change({"p": PHONE}, {"p": PHONE + trunk})
    assert added is not None and added.endpoints == {"t-trunk-a"} and not added.gone
    changed = pjsip_change(
        {"p": PHONE}, {"p": PHONE.replace("max_contacts = 1", "max_contacts = 2")}
    )
    assert changed is not None and changed.endpoints == {"t-100"}
    gone = pjsip_change({"p": PHONE + trunk}, {"p": PHONE})
    assert gone is not None and gone.gone == {"t-trunk-a"} and not gone.endpoints
