"""The web view: ``celery -A proj durable web`` serves runs, their graphs and checkpoints,
and operator actions in the browser. app.py is the HTTP side on Tornado; views.py builds what
the pages show from the public objects; svg.py draws the graph; actions.py and selection.py are
the operations on one run and on a selection; filters.py and labels.py speak the CLI's
spellings; problems.py says what went wrong. static/live.js keeps a run's page in step with
the run. Imported only by that command: nothing on a worker's import path loads a web
stack."""
