"""The fan-out side: consume canonical revocation events and apply them to downstream sinks.

``runtime`` holds the consume → apply → commit loop; ``sinks`` holds one module per sink kind;
``worker`` wires them from settings.
"""
