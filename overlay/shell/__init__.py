"""The trio shell: every task, socket, thread and clock reading of a node lives here, around
the sans-IO cores (``overlay.sip``, ``linkstate``, ``routing``, ``media``, ``security``, ``noc``).
"""
