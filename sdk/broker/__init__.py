"""A secured private Mosquitto: certificates, accounts, ACL and configuration (``fedge broker init``).

The cloud side writes these files; a device only receives its CA certificate, its
``[mqtt]`` fragment and its password, and never imports this package.
"""
