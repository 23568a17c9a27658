"""Finding the other devmesh nodes of a namespace on the LAN."""
