"""`kubellm demo` (what `make demo` runs): an LLMService applied with kubectl becomes a model that answers.

In the local sandbox by default: start it (or reuse the running one), `kubectl apply -f examples/tiny-smollm2.yaml`,
wait for Ready with a progress line, show `kubectl get llmservices`, ask one question through the Service on
127.0.0.1 and print the answer, then the commands to try next. The sandbox keeps running for those commands
(``--down-after`` stops it). ``--cluster kind`` runs the same on a kind cluster when Docker and kind are present.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from kubellm_sandbox import cli, kind
from kubellm_sandbox.runner import FORWARDING_ANNOTATION
from kubellm_sandbox.supervisor import Layout, admin_token

EXAMPLE = pathlib.Path("examples/tiny-smollm2.yaml")
HUB_EXAMPLE = pathlib.Path("examples/hub-tiny.yaml")
QUESTION = "What is Kubernetes? Answer in one sentence."
READY_TIMEOUT_S = 900.0  # the first start converts the embedded model into the cache (tens of seconds on a laptop)
KIND_CLUSTER = "kubellm-demo"
FIELD_MANAGER = "kubellm-demo"


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to look at."""


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def find_example(path: pathlib.Path) -> pathlib.Path:
    """The example manifest: as given (relative to the current directory), else in this source tree."""
    if path.is_file():
        return path
    in_tree = pathlib.Path(__file__).resolve().parent.parent / path
    if not path.is_absolute() and in_tree.is_file():
        return in_tree
    raise DemoError(f"{path}: no such file (run the demo from the kubellm repository, or pass --file)")


def load_llmservice(path: pathlib.Path) -> dict[str, Any]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    services = [doc for doc in documents if doc.get("kind") == "LLMService"]
    if len(services) != 1:
        raise DemoError(f"{path}: expected exactly one LLMService, found {len(services)}")
    return services[0]


class Api:
    """The few API calls the demo makes, over plain HTTP to the sandbox, with the admin token of its kubeconfig (the
    emulator authenticates every request, as an apiserver does)."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url
        self.token = token

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def llmservice_path(self, namespace: str, name: str = "") -> str:
        return f"/apis/kubellm.dev/v1alpha1/namespaces/{namespace}/llmservices" + (f"/{name}" if name else "")

    def apply(self, obj: dict[str, Any]) -> None:
        namespace = obj["metadata"].get("namespace") or "default"
        path = self.llmservice_path(namespace, obj["metadata"]["name"]) + f"?fieldManager={FIELD_MANAGER}&force=true"
        self.request("PATCH", path, yaml.safe_dump(obj).encode(), "application/apply-patch+yaml")


def kubectl(kubeconfig: pathlib.Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        check=False,
        text=True,
        capture_output=capture,
        timeout=120,
    )


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def wait_ready(api: Api, namespace: str, name: str, timeout: float, layout: Layout) -> dict[str, Any]:
    """Polls the LLMService until Ready, printing a line whenever its state changes; raises DemoError on timeout."""
    began = time.monotonic()
    shown = ""
    tty = sys.stdout.isatty()
    obj: dict[str, Any] = {}
    while True:
        elapsed = time.monotonic() - began
        try:
            obj = api.request("GET", api.llmservice_path(namespace, name))
        except (urllib.error.URLError, OSError) as error:
            raise DemoError(f"the sandbox's API does not answer ({error}); see {layout.sandbox_log}") from error
        status = obj.get("status") or {}
        ready = _condition(obj, "Ready")
        phase = status.get("phase") or "Pending"
        if not status:
            phase, ready = "Pending", {"reason": "Waiting", "message": "the operator has not reported yet"}
        elif status.get("observedGeneration") != obj["metadata"].get("generation"):
            # A status from before this apply says nothing about the spec just applied.
            phase, ready = "Pending", {"reason": "Waiting", "message": "the operator has not seen this change yet"}
        line = f"{phase:<11} {status.get('ready') or '0/?':>5}  {ready.get('reason') or 'Waiting'}: "
        line += str(ready.get("message") or "the operator has not reported yet")
        if tty:
            print(f"\r\033[K  [{elapsed:4.0f}s] {line[:150]}", end="", flush=True)
        elif line != shown:
            print(f"  [{elapsed:4.0f}s] {line}", flush=True)
        shown = line
        if phase == "Ready":
            if tty:
                print()
            return obj
        if phase == "Failed":
            break
        if elapsed > timeout:
            break
        time.sleep(1.0)
    if tty:
        print()
    raise DemoError(
        f"LLMService {name} is {phase} after {time.monotonic() - began:.0f}s: {ready.get('message')}\n"
        f"  look at: kubectl describe llms {name}; kubectl get pods; the pod logs under {layout.root / 'pods'}"
    )


def ask(address: str, question: str) -> str:
    """``POST /ask`` at ``host:port``."""
    body = json.dumps({"text": question}).encode()
    request = urllib.request.Request(f"http://{address}/ask", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return str(json.load(response)["response"])


GATEWAY_WAIT_S = 30.0


def ask_gateway(gateway_url: str, model: str, question: str) -> str:
    """The question through the sandbox's gateway (OpenAI chat completions, ``model`` NAMESPACE/NAME), once its
    watches list the LLMService (bounded wait)."""
    deadline = time.monotonic() + GATEWAY_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"{gateway_url}/v1/models", timeout=5) as response:
                if any(m.get("id") == model for m in json.load(response).get("data", [])):
                    break
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"the gateway at {gateway_url} did not list {model} within {GATEWAY_WAIT_S:.0f}s")
        time.sleep(0.5)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}]}).encode()
    request = urllib.request.Request(
        f"{gateway_url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return str(json.load(response)["choices"][0]["message"]["content"])


def service_address(api: Api, namespace: str, name: str, port: int) -> tuple[str, str]:
    """host:port to ask on: the Service's (forwarded by the sandbox on 127.0.0.1), else a ready pod's own address
    (podIP and the container port, as in a cluster) when the Service port is taken on this machine."""
    service = api.request("GET", f"/api/v1/namespaces/{namespace}/services/{name}")
    forwarding = (service["metadata"].get("annotations") or {}).get(FORWARDING_ANNOTATION, "")
    if not forwarding.startswith("unavailable"):
        return f"127.0.0.1:{port}", f"the Service {name} on 127.0.0.1:{port}"
    pods = api.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=kubellm.dev/llmservice={name}")
    for pod in pods["items"]:
        ip = (pod.get("status") or {}).get("podIP")
        ports = [p for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []]
        if ip and ports:
            address = f"{ip}:{ports[0]['containerPort']}"
            print(f"  note: {forwarding.removeprefix('unavailable: ')}; asking the pod directly on {address}")
            return address, f"pod {pod['metadata']['name']} on {address}"
    raise DemoError(f"the Service port {port} is taken and no pod has an address yet")


def run_sandbox(args: argparse.Namespace) -> int:
    layout = Layout(args.data_dir)
    example = find_example(args.file)
    manifest = load_llmservice(example)
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace") or "default"
    port = int(((manifest.get("spec") or {}).get("service") or {}).get("port") or 5000)

    step("Starting the kubellm sandbox: Kubernetes API emulator, kubellm operator, local runner (pods = processes)")
    running = cli.read_state(layout)
    state = cli.up(layout, api_port=args.api_port, quiet=True)
    if running is not None and not running.get("starting"):
        print(f"  reusing the sandbox already running in {layout.root} (pid {state['pid']})")
    else:
        print(f"  API {state['api_url']} (pid {state['pid']}); node {state['node']}; logs in {layout.logs}")
    kubeconfig = layout.kubeconfig.resolve()
    print(f"  export KUBECONFIG={kubeconfig}")
    api = Api(state["api_url"], admin_token(layout))

    has_kubectl = shutil.which("kubectl") is not None
    shown_example = os.path.relpath(example) if not example.is_absolute() else str(example)
    step(f"kubectl apply -f {shown_example}")
    if has_kubectl:
        if kubectl(kubeconfig, "apply", "-f", str(example)).returncode != 0:
            raise DemoError(f"kubectl apply -f {example} failed (see above)")
    else:
        api.apply(manifest)
        print(f"  llmservice.kubellm.dev/{name} applied (kubectl is not on PATH: applied through the API directly)")

    step(f"Waiting for LLMService {name} to be Ready (the first start converts the model into the cache)")
    wait_ready(api, namespace, name, args.timeout, layout)

    step("kubectl get llmservices")
    if has_kubectl:
        kubectl(kubeconfig, "get", "llmservices", "-n", namespace)
    else:
        obj = api.request("GET", api.llmservice_path(namespace, name))
        print(f"NAME   READY   PHASE\n{name}   {obj['status'].get('ready')}   {obj['status'].get('phase')}")

    local, where = service_address(api, namespace, name, port)
    step(f"Asking {where}: POST /ask")
    print(f"  Q: {args.question}")
    began = time.monotonic()
    try:
        answer = ask(local, args.question)
    except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
        raise DemoError(f"no answer from {local}/ask: {error}") from error
    print(f"  A: {answer.strip()}")
    print(f"  ({time.monotonic() - began:.1f}s)")

    gateway_url = state.get("gateway_url")
    if gateway_url:
        model = f"{namespace}/{name}"
        step(f"Asking through the gateway {gateway_url}: POST /v1/chat/completions, model {model}")
        print(f"  Q: {args.question}")
        began = time.monotonic()
        try:
            answer = ask_gateway(gateway_url, model, args.question)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            raise DemoError(f"no answer through the gateway: {error} (see {layout.gateway_log})") from error
        print(f"  A: {answer.strip()}")
        print(f"  ({time.monotonic() - began:.1f}s)")

    data_dir_flag = "" if layout.root == cli.DEFAULT_DATA_DIR else f" --data-dir {layout.root}"
    gateway_hint = (
        f"\n  curl -sN {gateway_url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        '       -d \'{"model": "default/elastic", "stream": true, "messages": [{"role": "user", "content": "Hi!"}]}\''
        if gateway_url
        else ""
    )
    if args.down_after:
        step("Stopping the sandbox (--down-after)")
        cli.down(layout)
        return 0
    print(
        f"""
Try next (the sandbox keeps running):
  export KUBECONFIG={kubeconfig}
  kubectl get llmservices,deployments,pods,services
  kubectl describe llmservice {name}
  curl -s {local}/ask -H 'Content-Type: application/json' -d '{{"text": "Why is the sky blue?"}}'
  curl -s {local}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "{(manifest.get("spec") or {}).get("model", {}).get("name", "")}", "messages": [{{"role": "user", "content": "Hi!"}}]}}'
  kubectl scale llmservice {name} --replicas 2      # a second local inference process
  kubectl apply -f examples/autoscaled-tiny.yaml    # at zero until a request to the gateway wakes it{gateway_hint}
  kubellm sandbox status{data_dir_flag}

Stop it: make sandbox-down   (or: kubellm sandbox down{data_dir_flag})"""
    )
    return 0


def _run(command: list[str], *, input_text: str | None = None) -> None:
    print("  $ " + " ".join(command), flush=True)
    result = subprocess.run(command, input=input_text, text=True, check=False)
    if result.returncode != 0:
        raise DemoError(f"`{' '.join(command)}` failed with exit code {result.returncode}")


def run_kind(args: argparse.Namespace) -> int:
    """The same loop on a kind cluster, with the install steps of docs/e2e.md."""
    missing = kind.missing_tools()
    if missing:
        print(
            "kubellm demo --cluster kind needs Docker, kind and kubectl; missing: "
            + "; ".join(missing)
            + "\n  Without them, `make demo` (no CLUSTER) runs the same loop in the local sandbox.",
            file=sys.stderr,
        )
        return 2
    example = find_example(args.file)
    manifest = load_llmservice(example)
    name = manifest["metadata"]["name"]
    port = int(((manifest.get("spec") or {}).get("service") or {}).get("port") or 5000)
    step("Building the images")
    for command in kind.build_commands():
        _run(command)
    step(f"kind cluster {KIND_CLUSTER}")
    listed = subprocess.run(kind.list_clusters_command(), capture_output=True, text=True, check=False)
    if KIND_CLUSTER in listed.stdout.split():
        _run(kind.export_kubeconfig_command(KIND_CLUSTER))
    else:
        _run(kind.create_cluster_command(KIND_CLUSTER))
    _run(kind.load_images_command(KIND_CLUSTER))
    step("Installing the operator (deploy/)")
    for command in kind.install_commands(KIND_CLUSTER):
        _run(command)
    k = kind.kubectl(KIND_CLUSTER)
    step(f"kubectl apply -f {example} (imagePullPolicy IfNotPresent: the images loaded into kind)")
    manifest.setdefault("spec", {})["imagePullPolicy"] = "IfNotPresent"
    _run([*k, "apply", "-f", "-"], input_text=yaml.safe_dump(manifest))
    step(f"Waiting for LLMService {name} to be Ready")
    _run([*k, "wait", "--for=condition=Ready", f"llmservice/{name}", f"--timeout={int(args.timeout)}s"])
    step("kubectl get llmservices")
    _run([*k, "get", "llmservices"])
    step(f"Asking the Service through kubectl port-forward svc/{name} {port}")
    forward = subprocess.Popen([*k, "port-forward", f"svc/{name}", f"{port}:{port}"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = ask(f"127.0.0.1:{port}", args.question)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise DemoError(f"no answer through port-forward on 127.0.0.1:{port}") from None
                time.sleep(1)
        print(f"  Q: {args.question}\n  A: {answer.strip()}")
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    print(
        f"\nTry next: kubectl --context {kind.context(KIND_CLUSTER)} get llmservices,pods\n"
        f"Stop it: kind delete cluster --name {KIND_CLUSTER}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm demo",
        description="Apply the tiny SmolLM2 LLMService, wait for Ready, and ask it a question: in the local sandbox "
        "(default) or on a kind cluster.",
    )
    parser.add_argument(
        "--cluster", choices=["sandbox", "kind"], default="sandbox", help="where (default: %(default)s)"
    )
    parser.add_argument(
        "--file", type=pathlib.Path, default=EXAMPLE, help="the LLMService manifest (default: %(default)s)"
    )
    parser.add_argument("--question", default=QUESTION, help="what to ask (default: %(default)r)")
    parser.add_argument(
        "--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait for Ready (default: %(default)g)"
    )
    parser.add_argument(
        "--data-dir", type=pathlib.Path, default=cli.DEFAULT_DATA_DIR, help="the sandbox's data directory"
    )
    parser.add_argument("--api-port", type=int, default=0, help="the sandbox API's port when it starts (default: free)")
    parser.add_argument("--down-after", action="store_true", help="stop the sandbox at the end")
    parser.add_argument(
        "--hub",
        action="store_true",
        help=f"the second demo: serve {HUB_EXAMPLE} from a local, throttled `kubellm hub` (docs/hub.md)",
    )
    parser.add_argument("--hub-bandwidth", default="1Mi", help="the demo hub's bytes/s (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    failed = True
    try:
        if args.cluster == "kind":
            return run_kind(args)
        if args.hub:
            from kubellm_hub.sandbox import HubStartError, start_hub, stop_hub

            step(f"Starting a local model hub (kubellm hub, {args.hub_bandwidth}/s) with a small random model")
            try:
                endpoint = start_hub(args.data_dir, bandwidth=args.hub_bandwidth)
            except HubStartError as error:
                raise DemoError(str(error)) from error
            print(f"  {endpoint}; log in {args.data_dir / 'hub'}")
            if args.file == EXAMPLE:
                args.file = HUB_EXAMPLE
            try:
                code = run_sandbox(args)
            finally:
                if args.down_after:
                    stop_hub(args.data_dir)
            if not args.down_after:
                print(
                    "Stop the hub with the sandbox: kubellm demo --hub --down-after, or kill $(cat "
                    f"{args.data_dir / 'hub' / 'hub.pid'})"
                )
        else:
            code = run_sandbox(args)
        failed = False
        return code
    except (DemoError, cli.SandboxError) as error:
        print(f"\nkubellm demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        keeps = "is stopped (--down-after)" if args.down_after else "keeps running (stop it with: kubellm sandbox down)"
        print(f"\nkubellm demo: interrupted; the sandbox {keeps}", file=sys.stderr)
        return 130
    finally:
        # --down-after promises no process is left behind, whatever happened (a failed demo in a test included).
        if failed and args.down_after and args.cluster != "kind":
            cli.down(Layout(args.data_dir))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
