"""The HTTP faces of the service: the Litestar app, its controllers, structs and problems."""
