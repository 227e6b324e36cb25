from twisted.application.service import ServiceMaker

volumecapServer = ServiceMaker(
    "volumecap server",
    "volumecap.server.tap",
    "Volumecap server: holds slices of caps and answers applications.",
    "volumecap-server",
)
