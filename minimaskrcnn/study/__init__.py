"""Looking inside the network: a picture of every stage of one run and an HTML page walking through them.

Modules, in reading order:
    explain.py   `explain(model, image, outdir)`: run with a trace, draw every stage, write index.html
    view.py      what the pictures work from: the traced run, and what is derived from it openly
    figures.py   one picture per stage (drawing primitives from `render.draw`)
    page.py      the texts of the stages (with their papers) and the HTML page
"""
