"""Processes and contexts on the ROS graph, for the tools (demo, soak, benchmark, msseg-bag) and the tests.

* `NodeProcess`: a node in a subprocess, started the way users start it (its console script, else
  `python -m`), its output in a log file; stopped with SIGINT (a clean rclpy shutdown), then SIGTERM,
  then SIGKILL.
* `PrivateContext`: an rclpy Context of its own with an executor spinning in a background thread, so
  the nodes of a tool or a test share no global state and Ctrl-C stays the program's.
* `run_node`: the body of a node's console script (init, build, spin, clean up; exit status 2 with one
  error line for a bad configuration).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

PACKAGE = "msseg_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The source tree's root (setup.py, config/, launch/) when running from a checkout."""
EXIT_CONFIG_ERROR = 2
SCRIPT_MODULES = {"segmentation_node": "msseg_ros.node.segmentation_node", "synthetic_camera": "msseg_ros.tools.camera",
                  "evaluator_node": "msseg_ros.tools.evaluator", "msseg-bag": "msseg_ros.bag",
                  "transport_echo": "msseg_ros.bench.echo"}  # the last: msseg-bench's only, no console script
"""Console script -> module, for `python -m` where the script is not installed next to the interpreter."""


def one_line(exc: BaseException | str) -> str:
    """An error message on one line (log lines and exit messages)."""
    return " ".join(str(exc).split())


# -- command lines --------------------------------------------------------------------------------
def ros_value(value: Any) -> str:
    """A parameter value as `-p name:=VALUE` wants it (YAML): true/false, [a,b], plain text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(ros_value(v) for v in value) + "]"
    return str(value)


def ros_arguments(namespace: str = "", remaps: Iterable[tuple[str, str]] = (),
                  params: Mapping[str, Any] | None = None, params_file: str | os.PathLike | None = None) -> list[str]:
    """`--ros-args` with a parameters file, a namespace, remaps (from, to) and parameters (which
    override the file's)."""
    args = ["--ros-args"]
    if params_file:
        args += ["--params-file", str(params_file)]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    for src, dst in remaps:
        args += ["-r", f"{src}:={dst}"]
    for name, value in (params or {}).items():
        args += ["-p", f"{name}:={ros_value(value)}"]
    return args


def package_file(relative: str) -> Path | None:
    """A data file of the package (e.g. 'config/camvid.yaml'): the colcon install's share dir, else
    the source tree; None if neither has it."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory(PACKAGE)) / relative
        if path.is_file():
            return path
    except (ImportError, LookupError, OSError):  # not installed with colcon, or no AMENT_PREFIX_PATH
        pass
    path = SOURCE_ROOT / relative
    return path if path.is_file() else None


def node_command(executable: str) -> list[str]:
    """How to start a console script of this package with this interpreter: the script next to it,
    else `python -m` its module."""
    script = Path(sys.executable).with_name(executable)
    return [str(script)] if script.exists() else [sys.executable, "-m", SCRIPT_MODULES[executable]]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL (no orphaned nodes)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux (no libc.so.6 or prctl): nothing to set
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- a node in a subprocess -----------------------------------------------------------------------
class NodeProcess(contextlib.AbstractContextManager):
    """A node started like a user would (`segmentation_node --ros-args ...`), output in a log file.

    env: variables on top of this process's environment; log_path: where the output goes (default: a
    temporary file, removed by close()); inherit_output: print to this process's terminal instead;
    own_session: Ctrl-C in the terminal does not reach it (stop() asks it to stop);
    die_with_parent: it is terminated when this process dies, however it dies (Linux)."""

    def __init__(self, executable: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
                 inherit_output: bool = False, own_session: bool = False, die_with_parent: bool = False):
        self.name = executable
        self.cmd = node_command(executable) + list(args)
        self._temporary_log = log_path is None and not inherit_output
        if self._temporary_log:
            fd, path = tempfile.mkstemp(prefix=f"{executable}_", suffix=".log")
            os.close(fd)
            log_path = path
        self.log_path = Path(log_path) if log_path is not None else None
        self._interrupted = False
        log = open(self.log_path, "wb") if self.log_path is not None else None  # noqa: SIM115 - the child's copy
        try:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT if log else None, cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=own_session,
                preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None)
        finally:
            if log is not None:
                log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def output(self) -> str:
        """Everything it printed so far ('' when it prints to the terminal)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().rstrip().splitlines()[-lines:])

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status once it ends by itself (subprocess.TimeoutExpired after `timeout`)."""
        return self.proc.wait(timeout)

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        """Until it has printed `text`; RuntimeError if it exits or the time runs out first."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.returncode} before printing {text!r}:\n"
                                   f"{self.tail(40)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} from {self.name} within {timeout} s:\n{self.tail(40)}")
            time.sleep(0.1)

    def interrupt(self) -> None:
        """Ask for a clean rclpy shutdown (SIGINT, once) without waiting for it."""
        if self.alive and not self._interrupted:
            self._interrupted = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (once) and `timeout` seconds for a clean exit, then SIGTERM, then SIGKILL: its exit status."""
        self.interrupt()
        for sig, wait in ((None, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if not self.alive:
                break
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        return self.proc.returncode

    def close(self) -> None:
        """stop(), and remove the log file if it is a temporary one."""
        self.stop()
        if self._temporary_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- nodes in this process ------------------------------------------------------------------------
class PrivateContext(contextlib.AbstractContextManager):
    """An rclpy Context of its own, with an executor spinning in a background thread.

    args: ROS arguments of the context ([] = none; None = this process's command line); threads > 1:
    a multi-threaded executor (callbacks of several nodes at once); node_name: also create a node.
    rclpy installs no signal handlers: Ctrl-C stays the program's to handle."""

    def __init__(self, node_name: str = "", args: Sequence[str] | None = (), threads: int = 1):
        self.context = Context()
        rclpy.init(args=list(args) if args is not None else None, context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        if threads > 1:
            self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        else:
            self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list[Node] = []
        self._closing = False
        self.spin_errors: list[str] = []  # what ended spinning other than a shutdown (logged too)
        self._thread = threading.Thread(target=self._spin, name="ros_spin", daemon=True)
        self._thread.start()
        self.node: Node | None = self.create_node(node_name) if node_name else None

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:  # the context was shut down: the normal end
            pass
        except Exception as exc:  # noqa: BLE001 - a callback's error ends spin(): say so, never silently
            if self._closing and self.context.ok() is False:
                return  # the executor or the context shutting down under spin()
            self.spin_errors.append(f"{type(exc).__name__}: {one_line(exc)}")
            get_logger("msseg.private_context").error(
                f"spinning stopped: {self.spin_errors[-1]}; callbacks of this context no longer run")

    def create_node(self, name: str, **kwargs: Any) -> Node:
        """A node in this context, spun by its executor and destroyed by close()."""
        node = rclpy.create_node(name, context=self.context, **kwargs)
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def add_node(self, node: Node) -> None:
        """Spin a node made elsewhere (with context=self.context); its owner destroys it."""
        self.executor.add_node(node)

    def remove_node(self, node: Node) -> None:
        self.executor.remove_node(node)

    def stop(self) -> None:
        """Stop spinning (before destroying nodes that are spun here)."""
        self._closing = True
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)

    def close(self) -> None:
        """Stop spinning, destroy the nodes made by create_node, shut the context down; idempotent."""
        self.stop()
        while self._nodes:
            self._nodes.pop().destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a node's console script ----------------------------------------------------------------------
def run_node(name: str, make_node: Callable[[], Node], args: Sequence[str] | None = None, *,
             spin: Callable[[Node], None] = rclpy.spin, config_errors: tuple[type[Exception], ...] = (),
             on_exit: Callable[[Node], None] | None = None) -> int:
    """rclpy.init, make the node, spin it until Ctrl-C or shutdown, then on_exit(node), destroy it and
    shut down. Exit status 2 with one error line (logger `name`) for bad ROS arguments or when making
    the node raises one of `config_errors`; else 0."""
    try:
        rclpy.init(args=args)
    except Exception as exc:  # RCLError: a malformed --ros-args, an unreadable --params-file
        reason = re.sub(r", at /\S+:\d+", "", one_line(exc))  # drop rcl's C source locations
        get_logger(name).error(f"cannot start: {reason}")
        return EXIT_CONFIG_ERROR
    node = None
    try:
        try:
            node = make_node()
        except config_errors as exc:
            get_logger(name).error(f"cannot start: {one_line(exc)}")
            return EXIT_CONFIG_ERROR
        spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if on_exit is not None:
                on_exit(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
