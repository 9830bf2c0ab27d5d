"""Each platform's driver on its real engine or emulator, and the contract every driver keeps."""
