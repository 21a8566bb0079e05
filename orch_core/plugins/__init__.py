"""Plugin loading: the hooks (``hookspecs``), the ``hookimpl`` marker, the loader and its
cached plan, and the settings plugins declare.
"""
