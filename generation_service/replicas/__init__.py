"""Replica mode: several service processes sharing one Redis and one run storage.

Redis carries what the replicas share: each run's live events (a stream per run), the run index, the
latest record of each run, request ids, ownership and takeover (the pending list of a consumer group),
the in-flight limit and the backends' load. Run storage stays the durable record: the owner of a run
journals every event there before it reaches Redis, so whatever Redis lost is put back from storage.
"""
