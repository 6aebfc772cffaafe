"""The lab (issue 16): see how a sample is made.

Qt-free services shared by the window (``gui/panels/lab_panel.py``) and the CLI
(``lab/cli_commands.py``): the compare board (:mod:`.compare`), branching a chain at a step
(:mod:`.branch`), interpolation between seeds or images (:mod:`.interpolate`), the chain's three
views x_t / x̂0 / ε̂ (:mod:`.chain`) and the annotated images, contact sheets, GIF and APNG they are
exported as (:mod:`.views`, Pillow and numpy only).
"""
