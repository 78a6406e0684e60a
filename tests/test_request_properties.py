"""Whatever a request holds, the real server answers with a documented status code whose message and
details fit a default client's metadata limit: never UNKNOWN, INTERNAL or a transport error.

One simulator and one service serve every example of the module. The simulator's queue is stalled after
set-up, so a valid request is accepted and waits; Generate cancels it after `accepted`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from comfy_simulator import SimulatorSettings, running
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from error_helpers import STATUS_BUDGET_BYTES, details_bin, rich_status, sent_bytes
from generation_service.server import running_service
from generation_service.settings import SHIPPED_TEMPLATES_DIR
from stack_helpers import SIM_WORKFLOWS, service_settings

if TYPE_CHECKING:
    from comfygen.v1.generation_pb2_grpc import GenerationServiceAsyncStub

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # with a RetryInfo: checked below
    grpc.StatusCode.UNAVAILABLE,
}
CALL_TIMEOUT_S = 30  # a hung call fails its example instead of the whole module
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Service:
    stub: GenerationServiceAsyncStub
    finished_runs: list[str]  # one completed, one rejected
    page_token: str  # a valid one


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    tmp = tmp_path_factory.mktemp("properties")
    (tmp / "runs").mkdir()
    async with running(SimulatorSettings(data_dir=tmp / "comfy")) as sim:
        settings_ = service_settings(tmp, "http://127.0.0.1:1", backend_url=sim.comfy_url)
        async with (
            running_service(settings_) as running_,
            grpc.aio.insecure_channel(f"127.0.0.1:{running_.port}") as ch,
        ):
            stub = pb_grpc.GenerationServiceStub(ch)
            completed = [
                reply.event
                async for reply in stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(template="solid_image")))
            ]
            assert completed[-1].HasField("completed")
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Submit(
                    pb.SubmitRequest(spec=pb.RunSpec(workflow_json='{"1": {"class_type": "Nope", "inputs": {}}}'))
                )
            first = await stub.ListRuns(pb.ListRunsRequest(page_size=1))
            assert first.next_page_token
            sim.faults.stall = True
            finished = [r.run_id for r in (await stub.ListRuns(pb.ListRunsRequest())).runs]
            yield Service(stub, finished, first.next_page_token)


def check_error(error: grpc.aio.AioRpcError) -> None:
    """A documented code, with a message and details that fit, and details that parse."""
    event(error.code().name)  # the spread of outcomes shows with --hypothesis-show-statistics
    assert error.code() in DOCUMENTED, (error.code(), error.details())
    assert sent_bytes(error) <= STATUS_BUDGET_BYTES, (error.code(), len(error.details() or ""))
    if details_bin(error):
        rich_status(error)
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # ours, not the transport's "Stream removed"
        assert rich_status(error).details[0].Unpack(error_details_pb2.RetryInfo())


async def check_generate(stub: GenerationServiceAsyncStub, request: pb.GenerateRequest) -> None:
    call = stub.Generate(request, timeout=CALL_TIMEOUT_S)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        check_error(error)
        return
    finally:
        call.cancel()  # an accepted run waits in the stalled queue: cancelling the call cancels it
    assert isinstance(first, pb.GenerateResponse) and first.event.HasField("accepted")
    event("accepted")


# --- strategies -----------------------------------------------------------------------------------------

IMAGE = json.loads((SIM_WORKFLOWS / "image.json").read_text())
TEMPLATES = sorted(p.name.removesuffix(".template.json") for p in Path(SHIPPED_TEMPLATES_DIR).glob("*.template.json"))
PARAM_NAMES = sorted(
    {
        name
        for p in Path(SHIPPED_TEMPLATES_DIR).glob("*.template.json")
        for name in json.loads(p.read_text())["parameters"]
    }
)
assert TEMPLATES and PARAM_NAMES, "no shipped templates found"
CLASS_TYPES = ["EmptyImage", "SimulatedSampler", "SaveImage", "PreviewImage", "EmptyAudio", "SaveAudioMP3", "LoadImage"]
INPUT_NAMES = ["width", "height", "batch_size", "color", "images", "filename_prefix", "steps", "seconds", "image"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
long_texts = st.integers(100, 6000).map(lambda n: "x" * n)
depths = st.sampled_from([64, 65, 1000, 5000]) | st.integers(1, 3000)  # Python's json gives up near 1000
digit_runs = st.integers(4000, 6000).map(lambda n: "9" * n)
links = st.tuples(st.sampled_from(["1", "2", "3", "99"]), st.integers(-2, 3)).map(list)
nodes = st.fixed_dictionaries(
    {
        "class_type": st.sampled_from(CLASS_TYPES) | st.text(max_size=30) | long_texts,
        "inputs": st.dictionaries(st.sampled_from(INPUT_NAMES) | st.text(max_size=10), json_values | links, max_size=5),
    }
)
graphs = st.dictionaries(st.sampled_from(["1", "2", "3"]) | st.text(max_size=10) | long_texts, nodes, max_size=8)


@st.composite
def mutated_image_workflows(draw: st.DrawFn) -> str:
    graph = json.loads(json.dumps(IMAGE))
    node = draw(st.sampled_from(sorted(graph)))
    name = draw(st.sampled_from(sorted(graph[node]["inputs"])))
    graph[node]["inputs"][name] = draw(json_values | links)
    return json.dumps(graph)


workflow_texts = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    graphs.map(json.dumps),
    mutated_image_workflows(),
    st.just(json.dumps(IMAGE)),
    depths.map(lambda n: "[" * n + "]" * n),
    depths.map(lambda n: '{"1": ' * n + "1" + "}" * n),
    digit_runs.map(lambda digits: json.dumps(IMAGE).replace('"width": 512', f'"width": {digits}')),
)
durations = st.builds(
    duration_pb2.Duration, seconds=st.integers(0, 10**6), nanos=st.integers(0, 10**9 - 1)
) | st.builds(duration_pb2.Duration, seconds=st.integers(-(2**63), 2**63 - 1), nanos=st.integers(-(2**31), 2**31 - 1))
# Half the requests leave these fields alone, so that most examples get past them to the workflow or template.
request_options: st.SearchStrategy[dict[str, Any]] = st.just({}) | st.fixed_dictionaries(
    {},
    optional={
        "workflow_name": st.text(max_size=300),
        "request_id": st.text(max_size=140)
        | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8),
        "include_previews": st.booleans(),
        "queue_timeout": durations,
        "execution_timeout": durations,
    },
)
param_values = st.one_of(
    st.builds(pb.ParamValue, text=st.text(max_size=40) | st.sampled_from(["random", "1e400", "nan", "run:x/image"])),
    st.builds(pb.ParamValue, text=digit_runs | long_texts | st.integers().map(str)),
    st.builds(pb.ParamValue, integer=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.ParamValue, number=st.floats()),
    st.builds(pb.ParamValue, flag=st.booleans()),
    st.builds(
        pb.ParamValue, data=st.binary(max_size=40) | st.binary(max_size=40).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)
    ),
    st.just(pb.ParamValue()),  # no value set
)
params = st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=20) | long_texts, param_values, max_size=6)


# DETACH would leave each accepted run waiting in the stalled queue for the rest of the module.
policies = st.sampled_from([pb.DISCONNECT_POLICY_UNSPECIFIED, pb.DISCONNECT_POLICY_CANCEL])


def generate_requests(source: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[pb.GenerateRequest]:
    return st.builds(
        lambda fields, options, policy: pb.GenerateRequest(spec=pb.RunSpec(**fields, **options), on_disconnect=policy),
        source,
        request_options,
        policies,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


# --- properties -----------------------------------------------------------------------------------------


@EXAMPLES
@given(request=generate_requests(st.builds(lambda text: {"workflow_json": text}, workflow_texts)))
async def test_any_workflow_request_gets_a_documented_status(service: Service, request: pb.GenerateRequest) -> None:
    await check_generate(service.stub, request)


@EXAMPLES
@given(
    request=generate_requests(
        st.builds(
            lambda template, values, with_workflow: (
                {"template": template, "params": values}
                if not with_workflow
                else {"workflow_json": json.dumps(IMAGE), "params": values}
            ),
            st.sampled_from(TEMPLATES) | st.text(max_size=30) | long_texts,
            params,
            st.booleans(),  # params sent with a raw workflow
        )
    )
)
async def test_any_template_request_gets_a_documented_status(service: Service, request: pb.GenerateRequest) -> None:
    await check_generate(service.stub, request)


@EXAMPLES
@given(
    page_size=st.integers(0, 60) | st.integers(0, 2**32 - 1),
    token=st.one_of(
        st.just(""),
        st.text(max_size=300),
        st.binary(max_size=200).map(_b64),
        json_values.map(lambda v: _b64(json.dumps(v).encode())),
        depths.map(lambda n: _b64(b"[" * n)),
        st.sampled_from(["VALID"]),
    ),
    statuses=st.lists(st.sampled_from(list(pb.RunStatus.values())) | st.integers(-(2**31), 2**31 - 1), max_size=4),
)
async def test_any_list_runs_request_gets_a_documented_status(
    service: Service, page_size: int, token: str, statuses: list[int]
) -> None:
    token = service.page_token if token == "VALID" else token
    request = pb.ListRunsRequest(page_size=page_size, page_token=token)
    request.statuses.extend(pb.RunStatus.ValueType(s) for s in statuses)  # unknown values of an open enum too
    try:
        page = await service.stub.ListRuns(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        check_error(error)
        return
    event("OK")
    assert page.ByteSize() <= 4 * 1024 * 1024


@EXAMPLES
@given(
    run_id=st.one_of(
        st.text(max_size=100), st.uuids().map(str), long_texts, st.sampled_from(["FINISHED0", "FINISHED1"])
    ),
    after_seq=st.integers(0, 2**64 - 1),
)
async def test_any_watch_request_gets_a_documented_status(service: Service, run_id: str, after_seq: int) -> None:
    if run_id.startswith("FINISHED"):
        run_id = service.finished_runs[int(run_id[-1])]
    try:
        events = [
            reply.event
            async for reply in service.stub.WatchRun(
                pb.WatchRunRequest(run_id=run_id, after_seq=after_seq), timeout=CALL_TIMEOUT_S
            )
        ]
    except grpc.aio.AioRpcError as error:
        check_error(error)
        return
    event("OK")
    assert all(e.run_id == run_id and e.seq > after_seq for e in events)
