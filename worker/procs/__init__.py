"""One pod, several processes: N feeders around one model process (``TAGSTREAM_PROCESSES`` > 1).

One Python process tops out at a few thousand events a second on the Kafka side (polling,
parsing, tokenizing, building and producing results), far below what a GPU classifies. So a pod
runs N *feeder* processes, each an ordinary consumer-group member running the usual Worker
(worker/app.py), and one *model* process that holds the model once on the device (one CUDA
context) and merges the feeders' batches into larger ones::

    supervisor (the pod's main process: supervisor.py, podview.py)
      |  starts, restarts, stops; serves the pod's /metrics, /healthz, /readyz
      +-- model process (model_server.py): bundle, warm-up, reloads; merges requests (merge.py)
      +-- feeder 0 (feeder.py): Worker with a RemoteRunner (remote.py) --+
      +-- feeder 1 ...                                                   +-- shared memory slots of
      +-- feeder N-1 ...                                                 |   token ids and answers,
                                                                         +-- tiny messages on a socket
                                                                             (transport.py)

How many feeders, and each one's settings: plan.py. Whose shared memory is whose (a pod killed
whole leaves its slots behind; the next one removes them): shm_claim.py. ``run_pod`` (supervisor.py) is what
``tagstream-worker run`` calls when there is more than one.
"""
