"""The web view: ``celery -A proj durable web`` serves runs, their graphs and checkpoints,
and operator actions in the browser (app.py on Tornado; views.py the data; svg.py the
graph; actions.py the POSTs). Imported only by that command: nothing on a worker's
import path loads a web stack."""
