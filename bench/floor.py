"""The transport floor of this machine, without shardmill: `python bench/floor.py [--n 3000]`.

Times the same 6 hops a shardmill call makes (client -> master -> agent -> child over a pipe,
and back) with raw pyzmq and os.pipe, plus `multiprocessing.Pool.apply` of a no-op. On a VM,
run it on an idle machine and on a busy one: waking an idle vCPU is what these cost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.queues import Queue

import zmq

STOP = b"stop"


def _child(r: int, w: int) -> None:
    while data := os.read(r, 65536):
        os.write(w, data)


def _agent(address: str) -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    if os.fork() == 0:
        os.close(w1)  # else its own copy keeps its input open: no EOF when the agent exits,
        os.close(r2)  # and the orphan holds the caller's stdout (`floor.py | tail` hung)
        _child(r1, w2)
        os._exit(0)
    os.close(r1)
    os.close(w2)
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(r2, zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if sock in ready:
            msg = sock.recv()
            if msg == STOP:
                os._exit(0)
            os.write(w1, msg)
        if r2 in ready:
            sock.send(os.read(r2, 65536))


def _master(ports: Queue[tuple[int, int]]) -> None:
    ctx = zmq.Context()
    clients, workers = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    ports.put(
        (
            clients.bind_to_random_port("tcp://127.0.0.1"),
            workers.bind_to_random_port("tcp://127.0.0.1"),
        )
    )
    worker, _ = workers.recv_multipart()
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(workers, zmq.POLLIN)
    client = b""
    while True:
        ready = dict(poller.poll())
        if clients in ready:
            client, msg = clients.recv_multipart()
            workers.send_multipart([worker, msg])
            if msg == STOP:
                return
        if workers in ready:
            clients.send_multipart([client, workers.recv_multipart()[1]])


def chain(n: int) -> float:
    """Median ms of a 100-byte message through the raw 6-hop chain."""
    ports: Queue[tuple[int, int]] = multiprocessing.Queue()
    master = multiprocessing.Process(target=_master, args=(ports,))
    master.start()
    client_port, worker_port = ports.get(timeout=10)
    agent = multiprocessing.Process(target=_agent, args=(f"tcp://127.0.0.1:{worker_port}",))
    agent.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{client_port}")
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.send(b"x" * 100)
        sock.recv()
        lat.append(time.perf_counter() - t0)
    sock.send(STOP)
    master.join(10)
    agent.join(10)
    sock.close(linger=0)
    return statistics.median(lat[n // 10 :]) * 1000


def _noop() -> None:
    pass


def pool_apply(n: int) -> float:
    with multiprocessing.Pool(2) as pool:
        pool.apply(_noop)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            pool.apply(_noop)
            lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=3000)
    n = p.parse_args().n
    print(f"raw pyzmq client->master->agent->child and back: {chain(n):.3f} ms")
    print(f"multiprocessing.Pool(2).apply(noop):               {pool_apply(n):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
