# Sphinx configuration of the networking-vcenter release notes, built from
# releasenotes/notes by reno's Sphinx extension:
#   sphinx-build -a -E -W -b html releasenotes/source releasenotes/build/html
project = "networking-vcenter Release Notes"
copyright = "networking-vcenter authors"
extensions = ["reno.sphinxext"]
master_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = []
html_theme = "alabaster"
html_static_path = []
