"""The HTTP face: the blueprint's views, what they share, the app factory and its server.

shared.py   the parts every view uses and the answers they give (the error envelope)
api.py      the /api/preview blueprint: thin views over the core
dashboard.py  rq-dashboard at /rq, with its writes guarded
app.py      create_app(): wires settings, Redis, the store, auth, errors and metrics
server.py   granian serving create_app(), each request read in full before Flask runs
"""
